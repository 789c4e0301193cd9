"""Multiplane images (ImMPI) for novel view synthesis: plane layouts, warping, compositing, fitting, rendering.

Public API: :class:`PlaneSet`, :func:`fronto_planes`, :func:`geo_planes`, :func:`render_mpi`,
:class:`MPIScene`, :func:`fit_mpi` / :class:`FitConfig`, :func:`render_views`, :func:`evaluate_views`.
Submodules import torch; import them lazily from the CLI.
"""

from geoimplicit.mpi.planes import PlaneSet, fronto_planes, geo_planes

__all__ = ["PlaneSet", "fronto_planes", "geo_planes"]
