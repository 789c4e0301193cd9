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
    """

    name = "occupancy"
    point_fields = ("x", "y", "z")
    needs_ortho = True
    needs_gpu = True

    def __init__(self, weights=None, device: str = "auto", true_ortho: bool = False):
        from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS, load_checkpoint

        self.weights = weights
        self.device = device or "auto"
        self.true_ortho = bool(true_ortho)
        # read once (fails early, naming the file); prepare() builds the model from it in this process
        self._checkpoint = load_checkpoint(weights)
        self._weights_name = str(weights or DEFAULT_WEIGHTS.name)
        # the run's resume key covers these files: new weights at the same path redo the tiles
        self.model_files = (str(weights or DEFAULT_WEIGHTS),)

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
        return OccupancyPredictor(checkpoint or self.weights, self.device)

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
        return {"method": "occupancy", "weights": self._weights_name}
