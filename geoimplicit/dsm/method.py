"""DSM methods: the small protocol a tiled run needs, and the registry of methods by name.

A method turns one tile's points (and ortho crops) into a height grid on the tile's grid. The tiled run
(:mod:`geoimplicit.run`, a client of the job layer :mod:`geoimplicit.jobs`) does everything else: checking the
inputs, reading and routing the points, cropping the orthos, writing tiles atomically, resuming, executors, the
mosaic. See ``docs/dsm.md``.

Methods are registered by name as "module:attribute" strings so that heavy imports (torch) only happen when
the method is used; other installed packages add methods through the entry-point group
``geoimplicit.dsm_methods`` (:class:`geoimplicit.jobs.registry.Registry`)::

    register_method("occupancy", "geoimplicit.dsm.occupancy.method:OccupancyMethod")
    method = get_method("occupancy", weights="model.pt", device="cuda")
    method_class("occupancy").needs_gpu  # a class attribute: nothing is loaded
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geoimplicit.errors import InputError
from geoimplicit.jobs.registry import Registry

__all__ = ["TileOutput", "RunInputs", "DsmMethod", "register_method", "get_method", "method_names",
           "method_class", "METHODS"]


@dataclass
class TileOutput:
    """What a method returns for one tile, on ``tile.grid`` (overlap included).

    Attributes:
        height: (rows, cols) float32 heights in the CRS's vertical units; anything where ``valid`` is False.
        valid: (rows, cols) bool, True where ``height`` is a value.
        filled: optional (rows, cols) bool, True where the value was interpolated rather than measured.
        stats: small JSON-able numbers about the tile (points used, outliers, seconds ...), logged.
    """

    height: np.ndarray
    valid: np.ndarray
    filled: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class RunInputs:
    """Everything a method may need once per run (picklable: paths and numbers, no arrays).

    Attributes:
        points: point cloud paths (files, folders or globs as given).
        ortho: ortho GeoTIFF paths (may be empty).
        crs_wkt: the working CRS as WKT.
        resolution: output pixel size (CRS units).
        bounds: (left, bottom, right, top) of the mosaic grid.
        density: points per square CRS unit of the point data set (from the headers).
        z_range: (min, max) height of the points (from the headers).
        point_count: total points of the data set.
        workdir: the run's work folder (a method may cache things there, e.g. a trained model).
        metres_per_unit: of the CRS's horizontal unit (0.3048 for international feet).
        assumed_crs_wkt: the CRS the user gave (``--crs``), taken for inputs that have none (a world-file
            ortho); None when the working CRS came from the inputs.
    """

    points: list
    ortho: list
    crs_wkt: str
    resolution: float
    bounds: tuple
    density: float
    z_range: tuple
    point_count: int
    workdir: str
    metres_per_unit: float = 1.0
    assumed_crs_wkt: str | None = None


@runtime_checkable
class DsmMethod(Protocol):
    """The interface of a DSM method.

    Class attributes:
        name: registry name (``--method``).
        point_fields: point fields the method needs, "x", "y", "z" first (e.g. + "classification", "red").
        needs_ortho: whether ``run_tile`` wants ortho crops (an ortho given to a method that does not use it
            is still checked, and named in a warning).
        ortho_bands (optional, default 3): the bands an ortho must have for the method.
        needs_gpu: tiles are annotated with a GPU resource on Dask (read from the class: nothing is loaded).
        model_files (optional): files besides the inputs that decide the heights (a model's weights); a re-run
            resumes only while they are unchanged.

    Optional: ``check_inputs(crs, bounds)`` checks the method's own inputs against the points' CRS and the
    area, before anything is written (the sdf method's view set).
    """

    name: str
    point_fields: tuple
    needs_ortho: bool
    needs_gpu: bool

    def default_tiling(self, resolution: float, density: float, metres_per_unit: float = 1.0) -> tuple[float, float]:
        """(tile_size, overlap) in CRS units that suit the method (overlap >= its spatial reach); sizes the method
        thinks of in metres are divided by ``metres_per_unit``."""

    def prepare(self, inputs: RunInputs) -> Any:
        """Once per process before its first tile (load a model, fit a normaliser ...); returns a state."""

    def run_tile(self, tile, points: dict, ortho: list, state: Any, progress=None) -> TileOutput:
        """Heights on ``tile.grid`` from the points inside ``tile.bounds`` and the ortho crops (RasterData
        on the tile's bounds, or an empty list). A long tile reports ``progress(fraction, message)`` (may be
        None; it raises CancelledError when the user cancels).

        Optional: a method with ``prepare_tile(tile, points, ortho, state) -> prepared`` (thread-safe CPU work)
        has it run ahead in the tiled run's prefetch threads; its ``run_tile`` then gets ``prepared=``."""

    def tags(self) -> dict:
        """Metadata tags for the mosaic (method name, options)."""


METHODS = Registry("DSM method", "geoimplicit.dsm_methods", {
    "raster": "geoimplicit.dsm.rasterize:RasterMethod",
    "occupancy": "geoimplicit.dsm.occupancy.method:OccupancyMethod",
    "sdf": "geoimplicit.surface.method:SdfMethod",
}, hint="use --method raster")


def register_method(name: str, target) -> None:
    """Register a method class (or a "module:attribute" string, imported when first used) under ``name``."""
    METHODS.register(name, target)


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type:
    """The class of the method ``name`` (class attributes such as ``needs_gpu`` without building one)."""
    return METHODS.get(name)


def get_method(name: str, **options) -> DsmMethod:
    """An instance of the method ``name`` configured with ``options`` (unknown options -> InputError)."""
    cls = method_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise InputError(f"bad options for DSM method {name!r}: {exc}") from exc
