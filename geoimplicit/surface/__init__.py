"""Neural signed-distance surfaces from posed views (IDR), with trainable cameras and Iso-Points.

- :mod:`~geoimplicit.surface.config`: :class:`SurfaceConfig` (renderer ``idr | volume``, encoding, losses,
  Iso-Points, camera refinement).
- :mod:`~geoimplicit.surface.box`: :class:`SurfaceBox` (a tile's box about a local origin), :func:`ray_box`.
- :mod:`~geoimplicit.surface.networks`: the SDF network (geometric initialisation, frequency or grid
  encoding) and IDR's appearance network.
- :mod:`~geoimplicit.surface.render`: sphere tracing with IDR's differentiable intersection; NeuS-style volume
  rendering.
- :mod:`~geoimplicit.surface.isopoints`: projection, uniform resampling, upsampling, LAS/LAZ export.
- :mod:`~geoimplicit.surface.fit`: :func:`fit_surface` (resumable, progress, corrected cameras).
- :mod:`~geoimplicit.surface.products`: :func:`sdf_field` (for meshing), :func:`dsm_tile`, :func:`render_views`,
  :func:`export_iso_points`.

Conventions: ``docs/conventions.md``; details and measurements: ``docs/surface.md``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SurfaceConfig": "config", "SurfaceBox": "box", "ray_box": "box",
    "SDFNetwork": "networks", "AppearanceNetwork": "networks",
    "SurfaceModel": "model", "load_surface": "model",
    "IsoPoints": "isopoints", "write_iso_points": "isopoints",
    "fit_surface": "fit", "SurfaceFitResult": "fit",
    "sdf_field": "products", "dsm_tile": "products", "dsm_heights": "products", "render_views": "products",
    "export_iso_points": "products",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoimplicit.surface' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"geoimplicit.surface.{module}"), name)
    globals()[name] = value
    return value
