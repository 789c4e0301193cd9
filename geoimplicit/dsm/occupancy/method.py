"""The ``occupancy`` DSM method for the tiled run (:mod:`geoimplicit.run`): ``geoimplicit dsm --method occupancy``."""

from __future__ import annotations

import time

import numpy as np

from geoimplicit.dsm.method import TileOutput


class OccupancyMethod:
    """Heights from the occupancy network: per tile, encode once, surface search in every cell.

    Args:
        weights: checkpoint path (default: the shipped ``geoimplicit/weights/occupancy_default.pt``).
        device: "auto", "cpu" or "cuda".
        true_ortho: the orthos are true orthos (every roof on its footprint), for models that take it.
        refiner: height refiner, ``auto`` (the shipped one with the shipped weights), ``none`` or a path.
        search_kernel: the surface search's kernel, ``auto``, ``triton`` or ``torch`` (:class:`OccupancyPredictor`).
    """

    name = "occupancy"
    point_fields = ("x", "y", "z")
    needs_ortho = True
    needs_gpu = True
    device_threads = 2  # inference only (thread-safe): one tile is written while the next one is on the device

    def __init__(self, weights=None, device: str = "auto", true_ortho: bool = False, refiner: str | None = None,
                 search_kernel: str = "auto"):
        from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS, load_checkpoint
        from geoimplicit.dsm.occupancy.infer import resolve_refiner

        self.weights = weights
        self.device = device or "auto"
        self.true_ortho = bool(true_ortho)
        self.search_kernel = search_kernel
        # read once (fails early, naming the file); prepare() builds the model from it in this process
        self._checkpoint = load_checkpoint(weights)
        self._weights_name = str(weights or DEFAULT_WEIGHTS.name)
        setting = refiner or self._checkpoint_config_refiner()
        self._refiner = resolve_refiner(setting, weights)  # read now: a bad file fails before any output
        self._refiner_name = "none" if self._refiner is None else (
            setting if setting != "auto" else "occupancy_refiner_default.pt")
        # the run's resume key covers these files: new weights at the same path redo the tiles
        self.model_files = (str(weights or DEFAULT_WEIGHTS),) + self._refiner_files(setting)

    def default_tiling(self, resolution: float, density: float, metres_per_unit: float = 1.0) -> tuple[float, float]:
        """128 m tiles with 16 m of context (about the U-Net's receptive field), in CRS units."""
        del density
        mpu = metres_per_unit
        tile = max(resolution * 64, round(128.0 / mpu / resolution) * resolution)
        return tile, round(16.0 / mpu / resolution) * resolution

    def prepare(self, inputs):
        from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
        from geoimplicit.io.crs import linear_units, parse_crs

        self._mpu = linear_units(parse_crs(inputs.crs_wkt))[1]
        checkpoint, self._checkpoint = self._checkpoint, None
        predictor = OccupancyPredictor(checkpoint or self.weights, self.device, search_kernel=self.search_kernel)
        predictor.refiner = None if self._refiner is None else self._refiner.to(predictor.device)
        return predictor

    def _checkpoint_config_refiner(self) -> str:
        from geoimplicit.dsm.occupancy.config import config_from_dict

        return config_from_dict(self._checkpoint["config"], self.weights).extract.refiner

    def _refiner_files(self, setting: str) -> tuple:
        from geoimplicit.dsm.occupancy.refine import DEFAULT_PATH

        if self._refiner is None:
            return ()
        return (str(DEFAULT_PATH if setting == "auto" else setting),)

    def prepare_tile(self, tile, points: dict, ortho: list, state):
        """The tile's CPU work (frame, support, cells), done by the tiled run ahead of the device, in threads."""
        return self._frame(tile, points, ortho, state)

    def _frame(self, tile, points: dict, ortho: list, state):
        grid = tile.grid
        images = [(np.asarray(r.array)[:3], r.transform) for r in ortho][:2]
        return state.frame_tile(
            np.asarray(points["x"], np.float64), np.asarray(points["y"], np.float64),
            np.asarray(points["z"], np.float64), core_bounds=grid.bounds, context_bounds=tile.context_bounds,
            resolution=grid.resolution, metres_per_unit=getattr(self, "_mpu", 1.0), images=images,
            true_ortho=self.true_ortho)

    def run_tile(self, tile, points: dict, ortho: list, state, progress=None, prepared=None) -> TileOutput:
        t0 = time.perf_counter()
        if prepared is None:
            prepared = self._frame(tile, points, ortho, state)
        height, valid = state.search_tile(prepared, progress=progress)
        return TileOutput(height=height, valid=valid, filled=None,
                          stats={"points": int(len(points["x"])), "seconds": round(time.perf_counter() - t0, 3),
                                 "device": str(state.device)})

    def tags(self) -> dict:
        return {"method": "occupancy", "weights": self._weights_name, "refiner": self._refiner_name}
