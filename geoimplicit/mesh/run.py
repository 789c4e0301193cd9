"""Tiled mesh runs: ``geoimplicit mesh``, a client of the job layer (:mod:`geoimplicit.jobs`).

The inputs are checked exactly as for a DSM (:func:`geoimplicit.run.plan_run`: points, CRS, AOI, orthos, the
method's options, the tile grid), nothing is written before. Each tile job reads the tile's routed points and
ortho crops (the DSM tile job's loader), builds the method's field over the tile and extracts its surface on
the run's lattice (:mod:`geoimplicit.mesh.extract`); the ``mesh`` product kind (:mod:`geoimplicit.mesh.product`)
writes ``tiles/<id>.npz`` and merges the finished tiles by stitching them into one mesh file. A re-run with the
same inputs and options resumes; the per-tile meshes stay in the work folder.

Work folder::

    tiles.gpkg        the run index (QGIS opens it)
    tiles/<id>.npz    each tile's surface and its seam data
    points/           the points routed to each tile (removed after success)

Methods that give a field per tile are registered in :data:`MESH_FIELDS` ("occupancy", "sdf"):
``f(method, state, tile, points, ortho, lattice, options, cell_filter, crs_wkt) -> TileSurface``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from geoimplicit.errors import InputError
from geoimplicit.jobs.registry import Registry
from geoimplicit.mesh.extract import ExtractOptions
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.mesh.product import MeshProduct, aoi_filter

log = logging.getLogger(__name__)

__all__ = ["MESH_FIELDS", "MeshTileJob", "run_mesh", "plan_mesh"]

MESH_FIELDS = Registry("mesh method", "geoimplicit.mesh_methods",
                       {"occupancy": "geoimplicit.mesh.occupancy:occupancy_tile_surface",
                        "sdf": "geoimplicit.surface.method:sdf_tile_surface"},
                       hint="use --method occupancy")
_STATES: dict[str, Any] = {}  # run key -> the method's prepared state, once per process


@dataclass
class MeshTileJob:
    """One tile's surface to make (picklable)."""

    dsm_job: Any  # the DSM tile job of the same tile: its loader and its method
    product: MeshProduct
    options: dict  # ExtractOptions fields
    clip_wkt: str | None
    run_key: str

    @property
    def tile(self):
        return self.dsm_job.tile

    @property
    def workdir(self) -> str:
        return self.dsm_job.workdir

    @property
    def tile_id(self) -> str:
        return self.dsm_job.tile.id

    def load(self):
        return self.dsm_job.load(prepare=False)[:2]  # the points and orthos; the DSM's tile framing is not used

    def compute(self, loaded, progress=None):
        from geoimplicit.jobs.loop import TileOutcome

        points, ortho = loaded
        if len(points["x"]) == 0:
            return TileOutcome(None, {"points": 0}, message="no points")
        method = self.dsm_job._method()
        if self.run_key not in _STATES:
            _STATES[self.run_key] = method.prepare(self.dsm_job.inputs)
        import shapely

        clip = aoi_filter(shapely.from_wkt(self.clip_wkt)) if self.clip_wkt else None
        lattice = Lattice(tuple(self.product.lattice["origin"]), float(self.product.lattice["spacing"]))
        surface = MESH_FIELDS.get(self.dsm_job.method)(
            method, _STATES[self.run_key], self.tile, points, ortho, lattice, ExtractOptions(**self.options),
            clip, self.dsm_job.inputs.crs_wkt)
        stats = dict(surface.stats, points=len(points["x"])) if surface is not None else {}
        if surface is None or not surface.mesh.n_faces:
            return TileOutcome(None, stats, message="no surface")
        if progress is not None:
            progress(1.0, f"{surface.mesh.n_faces:,} triangles")
        return TileOutcome(surface, stats)


def run_lattice(plan) -> Lattice:
    """The run's lattice: nodes on the DSM grid's cell centres (where the DSM reads the field), from below the
    lowest point."""
    left, bottom = plan.tilegrid.grid.bounds[:2]
    s = plan.inputs.resolution
    z0 = math.floor((plan.dataset.z_range[0] - 100.0 / plan.inputs.metres_per_unit) / s) * s
    return Lattice((left - 3.5 * s, bottom - 3.5 * s, z0), s)


def plan_mesh(points, *, resolution: float, method: str = "occupancy", method_options=None, fmt: str = "ply",
              extract: ExtractOptions | None = None, **plan_args):
    """Check every input (as :func:`geoimplicit.run.plan_run` does, and the mesh method) and return
    (plan, product, run key, extract options); writes nothing."""
    from geoimplicit.run import plan_run

    if method not in MESH_FIELDS.names():
        raise InputError(f"the {method} method gives no field to mesh", hint=f"use --method "
                         f"{' or '.join(MESH_FIELDS.names())}")
    MESH_FIELDS.get(method)
    extract = extract or ExtractOptions()
    plan = plan_run(points, resolution=resolution, method=method, method_options=method_options, **plan_args)
    product = MeshProduct(run_lattice(plan).to_dict(), fmt)
    settings = json.dumps({"dsm_run": plan.run_key, "mesh": asdict(extract), "lattice": product.lattice},
                          sort_keys=True)
    return plan, product, hashlib.sha256(settings.encode()).hexdigest()[:16], extract


def run_mesh(points, output, *, resolution: float, aoi=None, bbox=None, bbox_crs=None, crs=None, assume_crs=None,
             ortho: Sequence = (), method: str = "occupancy", method_options: dict | None = None,
             tile_size: float | None = None, overlap: float | None = None, workdir=None, fmt: str | None = None,
             dsm_output=None, extract: ExtractOptions | None = None, overwrite: bool = False,
             keep_points: bool = False, executor=None, progress=None, cancel=None) -> dict[str, Path]:
    """A mesh of the surface over the AOI from point clouds (and orthos), tile by tile, resumable.

    Arguments as :func:`geoimplicit.run.run_dsm`, and:
        output: the mesh file (.ply, .obj or .glb; OBJ and GLB get a ``.prj`` beside them).
        fmt: "ply", "obj" or "glb" (default: from the suffix).
        dsm_output: also write the mesh re-rasterized as a DSM GeoTIFF on the run's grid (for ``geoimplicit eval``).
        extract: :class:`ExtractOptions` (MISE coarse stride, bisection steps).

    Returns:
        {"mesh": path, "tiles": index path, and "dsm" when asked}.
    """
    import shapely

    from geoimplicit.jobs.index import INDEX_NAME, open_run_index
    from geoimplicit.jobs.loop import run_and_merge, unfinished
    from geoimplicit.mesh.io import mesh_format, sidecar_paths
    from geoimplicit.outputs import check_output
    from geoimplicit.run import TileJob, _new_work_folder_removed_on_input_error

    output = Path(output)
    fmt = mesh_format(output, fmt)
    outputs = {"mesh": output, **({"dsm": Path(dsm_output)} if dsm_output else {})}
    for path in [*outputs.values(), *sidecar_paths(output, fmt)]:
        check_output(path, overwrite)
    workdir = Path(workdir) if workdir else output.with_name(f"{output.stem}_work")
    plan, product, key, extract = plan_mesh(points, resolution=resolution, method=method,
                                            method_options=method_options, fmt=fmt, extract=extract, aoi=aoi,
                                            bbox=bbox, bbox_crs=bbox_crs, crs=crs, assume_crs=assume_crs,
                                            ortho=ortho, tile_size=tile_size, overlap=overlap, workdir=workdir)
    tg = plan.tilegrid
    try:
        with _new_work_folder_removed_on_input_error(workdir):
            from geoimplicit.tiling.route import route_points

            statuses = open_run_index(workdir, tg, key, reset=("tiles", "points"),
                                      metadata={"product": product.to_dict(), "method": plan.method.name})
            todo = unfinished(workdir, tg.tiles, statuses, product)
            log.info("%d tiles, %d to do", len(tg.tiles), len(todo))
            area = plan.clip if plan.clip is not None else shapely.box(*tg.grid.bounds)
            clip = area.wkt
            jobs = [MeshTileJob(TileJob(t, plan.method_name, plan.options, plan.inputs, str(workdir), plan.run_key),
                                product, asdict(extract), clip, key) for t in todo]
            tags = {**plan.method.tags(), "product": "DSM re-rasterized from the mesh"}
            written = run_and_merge(
                jobs, workdir=workdir, tiles=tg.tiles, statuses=statuses, product=product, outputs=outputs,
                merge_kw=dict(tilegrid=tg, aoi=area, tags=tags, overwrite=overwrite, progress=progress,
                              cancel=cancel),
                total=len(tg.tiles), executor=executor, needs_gpu=plan.method.needs_gpu,
                before_jobs=lambda: route_points(plan.dataset, tg.tiles, workdir / "points",
                                                 fields=plan.method.point_fields, progress=progress, cancel=cancel),
                nothing=lambda results: ("no tile has a surface: the mesh would be empty",
                                         "check that the AOI/bbox overlaps the point clouds"),
                progress=progress, cancel=cancel)
    finally:
        from geoimplicit.run import _METHODS

        _STATES.pop(key, None), _METHODS.pop(plan.run_key, None)
    if not keep_points and (workdir / "points").exists():
        shutil.rmtree(workdir / "points", ignore_errors=True)
    return {**written, "tiles": workdir / INDEX_NAME}
