"""``--method sdf``: the neural SDF fitted per tile to posed views, as a DSM method and a mesh field.

Each tile fits its own surface (:func:`geoimplicit.surface.fit.fit_surface`) to the train views of one view set
over the tile's context box, with the tile's routed points as surface constraints, and keeps it in the run's
work folder (``tiles/<id>.sdf/``: resumable mid-fit from its checkpoint, removed with the tiles when the run's
inputs or settings change). The DSM reads the highest zero crossing per cell
(:func:`geoimplicit.surface.products.dsm_tile`); the mesh extracts the zero level set on the run's lattice
(:func:`sdf_tile_surface`). Cells seen by fewer than two train views are nodata: nothing is invented where the
views did not look.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from geoimplicit.dsm.method import RunInputs, TileOutput
from geoimplicit.errors import AOIError, CRSMismatchError, InputError

log = logging.getLogger(__name__)

__all__ = ["SdfMethod", "sdf_tile_surface", "seen_by"]

MIN_VIEWS = 2  # a height needs two views of the cell


class SdfMethod:
    """The neural SDF as a DSM method (see the module docstring).

    Args:
        views: the view set folder (LEVIR-NVS layout: Images/, Cams/, view_split.txt, crs.txt).
        config: a YAML/JSON file of :class:`geoimplicit.surface.config.SurfaceConfig` settings (may inherit_from).
        steps: fit steps per tile (overrides the config's).
        time_budget_s: wall-clock seconds per tile's fit (0: all the steps).
        refine_cameras: learn per-view pose corrections with each tile's surface.
        device: "auto", "cpu" or "cuda".
    """

    name = "sdf"
    point_fields = ("x", "y", "z")
    needs_ortho = False
    needs_gpu = True

    def __init__(self, views=None, config=None, steps=None, time_budget_s=None, refine_cameras=None, device=None):
        from geoimplicit.surface.data import load_view_set

        if not views:
            raise InputError("the sdf method fits surfaces to posed views", hint="pass --views VIEWS_DIR "
                             "(Images/, Cams/, view_split.txt and crs.txt)")
        self.views = str(views)
        self.view_set = load_view_set(self.views)  # checked now: nothing is written before
        self.settings, self.config = _settings(config, steps=steps, time_budget_s=time_budget_s,
                                               refine_cameras=refine_cameras, device=device)
        self.config_file = str(config) if config else None

    @property
    def model_files(self) -> list[str]:
        """The view set's files decide the heights: a re-run resumes only while they are unchanged."""
        root = Path(self.views)
        files = sorted(p for sub in ("Images", "Cams") for p in (root / sub).iterdir() if p.is_file())
        files += [p for p in (root / "view_split.txt", root / "crs.txt") if p.exists()]
        return [str(p) for p in files] + ([self.config_file] if self.config_file else [])

    def default_tiling(self, resolution: float, density: float, metres_per_unit: float = 1.0) -> tuple[float, float]:
        return 128.0 / metres_per_unit, 8.0 / metres_per_unit

    def check_inputs(self, crs, bounds) -> None:
        """The views in the points' CRS, their nadir footprint over the area (called before anything is written)."""
        import shapely

        from geoimplicit.io.crs import crs_equal, crs_name
        from geoimplicit.surface.data import default_box

        vs = self.view_set
        if not crs_equal(vs.crs, crs):
            raise CRSMismatchError(f"the views are in {crs_name(vs.crs)} but the points are in {crs_name(crs)}",
                                   path=self.views, hint="give views and points in one CRS")
        from geoimplicit.mpi.tiled import scene_height_range

        footprint = default_box(vs, vs.train_ids, scene_height_range(vs)).bounds
        if not shapely.box(*footprint).intersects(shapely.box(*bounds)):
            b = ", ".join(f"{v:.2f}" for v in footprint)
            raise AOIError(f"the views do not look at the area of the DSM (nadir footprint {b})", path=self.views,
                           hint="check the AOI/bbox and the view set")

    def prepare(self, inputs: RunInputs):
        return {"config": self.config, "workdir": Path(inputs.workdir)}

    def run_tile(self, tile, points: dict, ortho: list, state, progress=None) -> TileOutput:
        from geoimplicit.surface.products import cell_centres, dsm_tile

        model, stats = fit_tile(self, tile, points, state, progress)
        height, valid = dsm_tile(model, tile.grid)
        xy, _ = cell_centres(tile.grid)
        cells = np.flatnonzero(valid)
        unseen = seen_by(self.view_set, xy[cells], height.ravel()[cells]) < MIN_VIEWS
        valid.flat[cells[unseen]] = False
        return TileOutput(height, valid, stats=stats)

    def tags(self) -> dict:
        return {"method": "sdf", "views": self.views, **{k: str(v) for k, v in self.settings.items()}}


def _settings(config, **overrides):
    """The fit's settings as given (the config file's, then the options') and the checked SurfaceConfig."""
    from geoimplicit.config import load_yaml_tree
    from geoimplicit.surface.config import SurfaceConfig

    settings = dict(load_yaml_tree(config)) if config else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    cfg = SurfaceConfig.from_dict(settings)  # unknown keys refused now, with the known ones
    cfg.validate()
    return settings, cfg


def fit_tile(method: SdfMethod, tile, points: dict, state, progress=None):
    """The tile's fitted surface (fitted now, resumed, or read back) and a few numbers about it."""
    from geoimplicit.device import resolve_device
    from geoimplicit.surface.fit import fit_surface
    from geoimplicit.surface.model import load_surface

    model_dir = state["workdir"] / "tiles" / f"{tile.id}.sdf"
    xyz = np.stack([np.asarray(points[k], np.float64) for k in ("x", "y", "z")], 1)

    def fit_progress(done, total, stage="", message=""):
        if progress is not None:
            progress(done / max(total, 1), message)

    cfg = state["config"]
    result = fit_surface(method.views, model_dir, cfg, bounds=tile.context_bounds, points_xyz=xyz, resume=True,
                         progress=fit_progress)
    model = load_surface(model_dir / "model.pt", resolve_device(cfg.device))
    return model, {"fit_steps": int(result.steps), "fit_seconds": round(float(result.seconds), 2)}


def seen_by(view_set, xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """How many train views see each world point (x, y, z) inside their image (depth > 0; occlusion ignored)."""
    pts = np.column_stack([np.asarray(xy, np.float64)[:, :2], np.asarray(z, np.float64)])
    count = np.zeros(len(pts), np.int32)
    for vid in view_set.train_ids:
        cam = view_set.cameras[vid]
        uv, depth = cam.project(pts)
        inside = (depth > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= cam.width - 0.5) & (uv[:, 1] >= -0.5) & (
            uv[:, 1] <= cam.height - 0.5)
        count += inside
    return count


def sdf_tile_surface(method: SdfMethod, state, tile, points: dict, ortho: list, lattice, options, cell_filter=None,
                     crs_wkt=None):
    """The tile job's surface for ``geoimplicit mesh --method sdf``: the zero level set of the tile's fitted
    SDF on the run's lattice over the tile's core, between the box's lowest and highest heights."""
    from geoimplicit.mesh.extract import extract_box
    from geoimplicit.mesh.occupancy import tile_box
    from geoimplicit.surface.products import sdf_field

    model, stats = fit_tile(method, tile, points, state)
    field = sdf_field(model)
    z_lo, z_hi = model.box.height_range
    lo, hi = tile_box(lattice, tile.core_bounds, z_lo, z_hi)
    surface = extract_box(field, lattice, lo, hi, options=options, cell_filter=cell_filter, crs_wkt=crs_wkt)
    if surface is not None:
        surface.stats.update(stats)
    return surface
