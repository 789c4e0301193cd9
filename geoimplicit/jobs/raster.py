"""The ``raster`` product kind: per tile, one GeoTIFF per layer on the tile's grid (overlap included); merged by
the feathered mosaic (:func:`geoimplicit.mosaic.mosaic`) into one COG per layer.

A layer is one tile file with named bands, e.g. the DSM's ``tiles/<id>.tif`` (height, filled) or the tiled
NVS fit's ``tiles/<id>/height.tif`` and ``tiles/<id>/true_ortho.tif``. Tile files carry their core bounds and
overlap as tags, which the mosaic's feathering reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from geoimplicit.mosaic import NODATA, TAG_CORE, TAG_ID, TAG_OVERLAP

__all__ = ["RasterLayer", "RasterProduct", "write_raster_tile", "masked_bands", "dsm_bands"]


@dataclass(frozen=True)
class RasterLayer:
    """One tile file of a raster product and the COG it is merged into.

    Attributes:
        name: key of the layer in a job's data and in the run's outputs ("dsm", "height", "ortho").
        path: the tile file under the work folder, ``{id}`` standing for the tile id ("tiles/{id}.tif").
        bands: band names of the tile file.
        dtype, nodata: of the tile file and of the merged COG.
        merge_bands: the tile bands blended into the COG, one output band each.
        mask_output: name of a second output (uint8 COG) made from tile band 2: 1 where it is 1 (the DSM's
            filled mask), or None.
        alpha: the COG gets an alpha band (255 valid, 0 nodata) after its bands.
        tags: tags of the merged COG besides the run's.
    """

    name: str
    path: str
    bands: tuple = ("value",)
    dtype: str = "float32"
    nodata: float = NODATA
    merge_bands: tuple = (1,)
    mask_output: str | None = None
    alpha: bool = False
    tags: dict = field(default_factory=dict)

    def tile_path(self, workdir, tile_id: str) -> Path:
        return Path(workdir) / self.path.format(id=tile_id)


@dataclass(frozen=True)
class RasterProduct:
    """Raster bands per tile (layers of :class:`RasterLayer`), merged into one COG per layer."""

    layers: tuple
    kind: str = "raster"

    def files(self, workdir, tile_id: str) -> list[Path]:
        return [layer.tile_path(workdir, tile_id) for layer in self.layers]

    def write(self, workdir, tile, data: dict, tags: dict) -> list[Path]:
        """``data``: layer name -> (bands, rows, cols) array on ``tile.grid``."""
        return [write_raster_tile(layer.tile_path(workdir, tile.id), data[layer.name], tile, nodata=layer.nodata,
                                  band_names=layer.bands, tags=tags) for layer in self.layers]

    def finished(self, workdir, tile_id: str) -> bool:
        return all(p.exists() for p in self.files(workdir, tile_id))

    def merge(self, workdir, tile_ids: Sequence[str], outputs: dict, *, tilegrid, aoi=None, tags=None,
              overwrite: bool = False, progress=None, cancel=None) -> dict:
        from geoimplicit.mosaic import mosaic

        scratch = merge_scratch(workdir)
        for layer in self.layers:
            mosaic([layer.tile_path(workdir, t) for t in tile_ids], outputs[layer.name],
                   **self.mosaic_options(layer, outputs, tilegrid=tilegrid, aoi=aoi, tags=tags, overwrite=overwrite,
                                         scratch=scratch, progress=progress, cancel=cancel))
        _remove_if_empty(scratch)
        return self.written(outputs)

    def mosaic_options(self, layer: RasterLayer, outputs: dict, *, tilegrid, aoi, tags, overwrite, scratch,
                       progress, cancel) -> dict:
        """The :func:`geoimplicit.mosaic.mosaic` options that merge one layer into its output(s)."""
        return dict(grid=tilegrid.grid, aoi=aoi, tags={**(tags or {}), **layer.tags},
                    filled_output=outputs.get(layer.mask_output) if layer.mask_output else None,
                    overwrite=overwrite, bands=layer.merge_bands, dtype=layer.dtype, nodata=layer.nodata,
                    alpha=layer.alpha, scratch=scratch, progress=progress, cancel=cancel)

    def written(self, outputs: dict) -> dict:
        """The merge's outputs: one COG per layer, and its mask COG where it has one."""
        return {name: Path(outputs[name]) for layer in self.layers for name in (layer.name, layer.mask_output)
                if name}

    def start_merge(self, workdir, tiles: Sequence, outputs: dict, *, tilegrid, aoi=None, tags=None,
                    overwrite: bool = False, progress=None, cancel=None) -> "StreamingMerge":
        """The same merge, begun while the tiles are still being made (one thread per layer): tell it each
        tile as it finishes (:meth:`StreamingMerge.tile_finished`), then :meth:`~StreamingMerge.finish`."""
        return StreamingMerge(self, workdir, tiles, outputs, tilegrid=tilegrid, aoi=aoi, tags=tags,
                              overwrite=overwrite, progress=progress, cancel=cancel)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "RasterProduct":
        layers = tuple(RasterLayer(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
                       for layer in d["layers"])
        return cls(layers)


def merge_scratch(workdir) -> Path:
    """``<workdir>/merge``, emptied: the mosaics' temporary blocks files (a killed run's are cleared here)."""
    import shutil

    folder = Path(workdir) / "merge"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass


class StreamingMerge:
    """A raster product's mosaics written while its tiles are made: each block as soon as the tiles over it are
    finished (:class:`geoimplicit.mosaic.TileFeed`), so that the merge mostly overlaps the tiles' compute."""

    def __init__(self, product: RasterProduct, workdir, tiles: Sequence, outputs: dict, *, tilegrid, aoi, tags,
                 overwrite, progress, cancel):
        import threading

        from geoimplicit.mosaic import TileFeed, mosaic

        self.product, self.workdir, self.outputs = product, workdir, outputs
        self.feeds, self.errors, self.threads = {}, {}, []
        scratch = merge_scratch(workdir)
        overlap_px = int(round(tilegrid.overlap / tilegrid.grid.resolution))
        for layer in product.layers:
            feed = self.feeds[layer.name] = TileFeed(
                [(layer.tile_path(workdir, t.id), t.bounds, overlap_px) for t in tiles])
            kw = product.mosaic_options(layer, outputs, tilegrid=tilegrid, aoi=aoi, tags=tags, overwrite=overwrite,
                                        scratch=scratch, progress=progress, cancel=cancel) | {"feed": feed}
            self.threads.append(threading.Thread(target=self._run, args=(layer.name, mosaic, outputs[layer.name], kw),
                                                 name=f"merge-{layer.name}", daemon=True))
        self._started, self.scratch = False, scratch

    def _start(self) -> None:
        # only once this run has finished a tile: by then the executor's worker processes are forked, and a
        # fork must not happen while this thread holds one of GDAL's locks
        if not self._started:
            self._started = True
            for t in self.threads:
                t.start()

    def _run(self, name, mosaic, output, kw) -> None:
        try:
            mosaic([], output, **kw)
        except BaseException as exc:  # re-raised by finish()
            self.errors[name] = exc

    def finished_before(self, tile_id: str, written: bool) -> None:
        """A tile finished by an earlier run (resume)."""
        for layer in self.product.layers:
            self.feeds[layer.name].finished(layer.tile_path(self.workdir, tile_id), written)

    def tile_finished(self, tile_id: str, written: bool) -> None:
        """A tile this run finished (``written``: it has a product, else it is empty); the first starts the mosaics."""
        self.finished_before(tile_id, written)
        self._start()

    def finish(self) -> dict:
        """Wait for the mosaics (every tile must have been told); the outputs written, or the first error."""
        self._start()
        for t in self.threads:
            t.join()
        for layer in self.product.layers:
            if layer.name in self.errors:
                raise self.errors[layer.name]
        _remove_if_empty(self.scratch)
        return self.product.written(self.outputs)

    def abort(self) -> None:
        """Stop the mosaics (their temporary files removed, no output written) and wait for them."""
        for feed in self.feeds.values():
            feed.abort()
        for t in self.threads:
            if t.is_alive():
                t.join()


def write_raster_tile(path, array: np.ndarray, tile, *, nodata, band_names: Sequence[str] = (),
                      tags: dict | None = None) -> Path:
    """Write one tile GeoTIFF atomically on ``tile.grid``, tagged with its id, core bounds and overlap."""
    from geoimplicit.io.raster import write_geotiff

    grid = tile.grid
    arr = array if array.ndim == 3 else array[None]
    if arr.shape[1:] != grid.shape:
        raise ValueError(f"tile {tile.id}: array {arr.shape[1:]} does not match the tile grid {grid.shape}")
    all_tags = {TAG_ID: tile.id, TAG_CORE: json.dumps(list(tile.core_bounds)),
                TAG_OVERLAP: str(int(round(tile.overlap / grid.resolution))), "AREA_OR_POINT": "Area"}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    write_geotiff(path, arr, grid.transform, grid.crs, nodata=nodata, tags=all_tags,
                  band_descriptions=list(band_names), overwrite=True, overviews=False, fast_codec=True)
    return Path(path)


def masked_bands(bands: Sequence[np.ndarray], valid: np.ndarray, nodata: float, dtype="float32") -> np.ndarray:
    """(bands, rows, cols) of ``dtype`` with ``nodata`` wherever ``valid`` is False."""
    out = np.stack([np.asarray(b, dtype) for b in bands])
    out[:, ~np.asarray(valid, bool)] = nodata
    return out


def dsm_bands(height: np.ndarray, valid: np.ndarray, filled: np.ndarray | None = None) -> np.ndarray:
    """A DSM tile's bands: height, then the filled mask (1 filled, 0 measured), nodata -9999 where not valid."""
    filled = np.zeros(height.shape, np.float32) if filled is None else filled
    return masked_bands([height, filled], valid, NODATA)
