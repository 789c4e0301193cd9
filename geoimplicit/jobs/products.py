"""Product kinds: what a tile job makes, how one tile's product is written, found finished, and merged.

A tile job declares its product kind (an object with the :class:`ProductKind` interface); the loop
(:mod:`geoimplicit.jobs.loop`) writes each tile's product through it, resumes by asking it whether a tile's
product is there, and the run merges the finished tiles with it. So a new product (a mesh, a point set, a
per-tile model) is a new kind, not a new loop. Kinds register by name, also from other installed packages
(entry-point group ``geoimplicit.product_kinds``), and the run index records the kind of its run
(:meth:`ProductKind.to_dict`), so that :func:`product_from_dict` rebuilds it from the index alone.

Built in: ``raster`` (:class:`geoimplicit.jobs.raster.RasterProduct`: GeoTIFF bands per tile, merged by the
feathered mosaic into COGs) and ``mesh`` (:class:`geoimplicit.mesh.product.MeshProduct`: a surface per tile,
stitched into one mesh file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from geoimplicit.jobs.registry import Registry

__all__ = ["ProductKind", "PRODUCT_KINDS", "register_product_kind", "product_kind", "product_from_dict"]


@runtime_checkable
class ProductKind(Protocol):
    """The interface of a product kind (picklable: it travels with the jobs to Dask workers)."""

    kind: str  # the registry name, e.g. "raster"

    def files(self, workdir, tile_id: str) -> list[Path]:
        """The files (or folders) of one tile's product under ``workdir``."""

    def write(self, workdir, tile, data: Any, tags: dict) -> list[Path]:
        """Write one tile's product (``data``: what the job computed, in the kind's own form) atomically."""

    def finished(self, workdir, tile_id: str) -> bool:
        """Whether the tile's product is complete (a resumed run skips the tile)."""

    def merge(self, workdir, tile_ids: Sequence[str], outputs: dict, *, tilegrid, aoi=None, tags=None,
              overwrite: bool = False, progress=None, cancel=None) -> dict:
        """Merge the finished tiles' products into ``outputs`` (name -> path); returns the paths written."""

    def to_dict(self) -> dict:
        """JSON-able description, ``{"kind": self.kind, ...}``, that :func:`product_from_dict` reads back."""


PRODUCT_KINDS = Registry("product kind", "geoimplicit.product_kinds",
                         {"raster": "geoimplicit.jobs.raster:RasterProduct",
                          "mesh": "geoimplicit.mesh.product:MeshProduct"})


def register_product_kind(name: str, target) -> None:
    """Offer a product kind class (or a ``"module:attribute"`` string) under ``name``."""
    PRODUCT_KINDS.register(name, target)


def product_kind(name: str) -> type:
    """The class of the product kind ``name``."""
    return PRODUCT_KINDS.get(name)


def product_from_dict(d: dict) -> ProductKind:
    """The product kind a run recorded (:meth:`ProductKind.to_dict`)."""
    return product_kind(d["kind"]).from_dict(d)
