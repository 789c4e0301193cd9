"""One call from two DSMs to an accuracy report folder (what ``geoimplicit eval`` runs)."""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from geoimplicit import __version__
from geoimplicit.errors import InputError
from geoimplicit.evaluate.align import AlignedPair, align_to_truth, crs_label, read_crs, same_crs
from geoimplicit.evaluate.classes import (
    SLOPE_BANDS_PERCENT, Zone, dilate_buildings, slope_band_zones, tile_zones, zones_from_class_raster,
    zones_from_points, zones_from_polygons,
)
from geoimplicit.evaluate.conventions import DEMCOMPARE_SLOPE_RANGES, check_conventions
from geoimplicit.evaluate.coregister import nuth_kaab, shift_array
from geoimplicit.evaluate.metrics import residual_stats
from geoimplicit.evaluate.report import REPORT_PRODUCTS, write_report
from geoimplicit.progress import check_cancel, no_progress

log = logging.getLogger(__name__)


def grid_units(crs) -> dict:
    """Horizontal unit of the grid and the unit of heights (the CRS's linear unit; metres for geographic)."""
    if crs is None:
        return {"horizontal": "unknown", "vertical": "unknown (assumed metre)", "metres_per_unit": 1.0}
    from geoimplicit.io.crs import linear_units

    name, factor = linear_units(crs)
    if crs.is_geographic or name == "degree":
        return {"horizontal": "degree", "vertical": "metre", "metres_per_unit": None}
    return {"horizontal": name, "vertical": name, "metres_per_unit": factor}


def zone_stats(residual: np.ndarray, zones: list[Zone], label: str, keep: np.ndarray | None = None) -> list[dict]:
    """Statistics of the residual in each zone, with the zone's descriptive fields.

    ``keep``: the cells the statistics use (outliers left out, demcompare's conventions); each entry then also
    holds ``count_with_outliers``, its share of the compared cells in percent and demcompare's ``percentil_90``.
    """
    return [{label: zone.name, **zone.fields, "cells": int(zone.mask.sum()), **group_stats(residual, zone.mask, keep)}
            for zone in zones]


def group_stats(residual: np.ndarray, mask: np.ndarray | None, keep: np.ndarray | None = None) -> dict:
    valid = np.isfinite(residual) if mask is None else np.isfinite(residual) & mask
    if keep is None:
        return residual_stats(residual, valid)
    from geoimplicit.evaluate.conventions import percentil_90

    n_compared = int(np.isfinite(residual).sum())
    return {**residual_stats(residual, valid & keep), "count_with_outliers": int(valid.sum()),
            "percent_of_compared": 100.0 * int(valid.sum()) / n_compared if n_compared else math.nan,
            "percentil_90": percentil_90(residual[valid])}


def evaluate_dsm(
    prediction: str | os.PathLike,
    truth: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    classes: str | os.PathLike | None = None,
    class_polygons: str | os.PathLike | None = None,
    class_field: str | None = None,
    class_points=None,
    class_points_crs=None,
    dilate_buildings_px: int = 0,
    building_class: str | None = None,
    tiles: str | os.PathLike | None = None,
    slope_bands=None,
    coregister: bool = False,
    conventions: str = "geoimplicit",
    reproject: bool = False,
    overwrite: bool = False,
    figures: bool = True,
    progress=None,
    cancel=None,
) -> dict:
    """Compare a predicted DSM with a reference DSM on the reference's grid and write a report folder.

    Args:
        prediction: the DSM to evaluate (GeoTIFF).
        truth: the reference DSM; its grid is the evaluation grid.
        output_dir: report folder (written atomically); None computes the report without writing.
        classes: class raster (LAS codes or any integer labels).
        class_polygons, class_field: polygon layer and the field naming each polygon's class.
        class_points: LAS/LAZ path(s) whose classification codes give ground / building / vegetation.
        class_points_crs: the CRS of class point files whose header has none (they are refused without it).
        dilate_buildings_px: dilate the building class by this many pixels (ImpliCity's evaluation).
        building_class: the class to dilate (a polygon class name or a class raster code); default the class
            named "building" or LAS code 6.
        tiles: tile index GeoPackage (``id`` + polygon), statistics per tile.
        slope_bands: slope band edges in percent of the truth's slope (last band open-ended); default
            0-5-10-25-45-90, and demcompare's 0-5-10-25-45 with its conventions; () for none.
        coregister: estimate the horizontal shift with Nuth and Kaab and compute statistics after it.
        conventions: "geoimplicit", or "demcompare": its slope, compared area and outlier removal
            (:mod:`geoimplicit.evaluate.conventions`), to reproduce its statistics.
        reproject: allow a prediction in another CRS.
        overwrite: replace an existing report folder.

    Returns:
        The report dictionary (as written to report.json), with ``"paths"`` added (the written files) when
        ``output_dir`` is given.
    """
    progress = progress or no_progress
    sources = sum(x is not None and x != () and x != [] for x in (classes, class_polygons, class_points))
    if sources > 1:
        raise InputError("give only one class source: --classes, --class-polygons or --class-points")
    if class_polygons is not None and not class_field:
        raise InputError("--class-polygons needs --class-field (the field naming each polygon's class)",
                         path=class_polygons)
    check_conventions(conventions)
    if slope_bands is None:
        slope_bands = DEMCOMPARE_SLOPE_RANGES if conventions == "demcompare" else SLOPE_BANDS_PERCENT
    inputs = [prediction, truth, classes, class_polygons, tiles, *(class_points or ())]
    if output_dir is not None:
        from geoimplicit.outputs import check_output

        check_output(output_dir, overwrite, inputs=inputs, products=REPORT_PRODUCTS)  # fail before any work
    total = 5
    progress(0, total, "eval", "aligning")
    pair: AlignedPair = align_to_truth(prediction, truth, reproject=reproject)
    grid = pair.grid
    units = grid_units(grid.crs)
    check_cancel(cancel)

    report: dict = {
        "software": {"name": "geoimplicit", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"prediction": str(Path(prediction).resolve()), "truth": str(Path(truth).resolve())},
        "residual": "prediction - truth",
        "grid": {"crs": crs_label(grid.crs), "crs_wkt": grid.crs.to_wkt() if grid.crs is not None else None,
                 "transform": list(grid.transform)[:6], "shape": list(grid.shape),
                 "resolution": list(grid.resolution), "bounds": list(grid.bounds)},
        "units": units,
        "prediction": pair.info,
    }
    pair, before = _coregister(pair, report, prediction, truth, coregister, reproject, units, progress, cancel)
    residual = pair.residual
    report["overlap"] = pair.overlap()
    progress(2, total, "eval", "statistics")
    keep, slope = None, None
    if conventions == "demcompare":
        residual, keep, slope = _demcompare_conventions(residual, before, pair, report)
    report["overall"] = group_stats(residual, None, keep)

    zones = _class_zones(grid, classes, class_polygons, class_field, class_points, class_points_crs)
    if zones is not None:
        zones = dilate_buildings(zones, int(dilate_buildings_px), building_class)
        report["per_class"] = zone_stats(residual, zones, "class", keep)
    check_cancel(cancel)
    if slope_bands:
        bands = slope_band_zones(pair.truth, grid, slope_bands, slope_percent=slope)
        report["per_slope_band"] = zone_stats(residual, bands, "band", keep)
    if tiles is not None:
        report["per_tile"] = zone_stats(residual, tile_zones(tiles, grid), "tile", keep)
    report["options"] = {"classes": _s(classes), "class_polygons": _s(class_polygons), "class_field": class_field,
                         "class_points": [str(p) for p in class_points] if class_points else None,
                         "class_points_crs": _s(class_points_crs),
                         "dilate_buildings_px": int(dilate_buildings_px), "building_class": _s(building_class),
                         "tiles": _s(tiles),
                         "slope_bands_percent": list(slope_bands) if slope_bands else None,
                         "coregister": coregister, "conventions": conventions, "reproject": reproject}
    check_cancel(cancel)
    if output_dir is not None:
        progress(3, total, "eval", "writing the report")
        paths = write_report(output_dir, report, residual, grid, overwrite=overwrite, figures=figures,
                             inputs=inputs)
        report["paths"] = {k: str(v) for k, v in paths.items()}
    progress(total, total, "eval", "done")
    return report


def _coregister(pair, report, prediction, truth, coregister, reproject, units, progress, cancel):
    """Nuth and Kaab on the aligned pair; returns the shifted pair and the residual before the shift."""
    if not coregister:
        report["coregistration"] = None
        return pair, None
    grid = pair.grid
    progress(1, 5, "eval", "co-registering")
    before = pair.residual
    coreg = nuth_kaab(pair.prediction, pair.truth, grid.transform, grid.crs,
                      metres_per_unit=units["metres_per_unit"] or 1.0, crs_units=units["horizontal"], cancel=cancel)
    report["overall_before_coregistration"] = residual_stats(before)
    report["overlap_before_coregistration"] = pair.overlap()
    # apply the shift to the original prediction in one resampling (its own CRS units: the grids share one
    # CRS here, or the prediction was warped and the offset is in the truth's CRS units)
    if same_crs(grid.crs, read_crs(prediction)):
        pair = align_to_truth(prediction, truth, reproject=reproject,
                              prediction_offset_crs=(coreg.dx_crs, coreg.dy_crs))
    else:  # warped prediction: shift it on the truth's grid
        pair.prediction = shift_array(pair.prediction, coreg.dx_px, coreg.dy_px)
    report["coregistration"] = {"method": "Nuth and Kaab 2011 (iterated)", **coreg.to_dict()}
    return pair, before


def _demcompare_conventions(residual, before, pair, report):
    """demcompare's compared area, outlier mask and slope; returns (residual on the area, keep, slope %)."""
    from geoimplicit.evaluate.conventions import demcompare_slope_percent, outlier_free

    area = np.isfinite(residual) if before is None else np.isfinite(residual) & np.isfinite(before)
    residual = np.where(area, residual, np.nan)
    keep, outliers = outlier_free(residual)
    slope = demcompare_slope_percent(pair.truth, pair.grid.transform, pair.grid.crs, area)
    report["conventions"] = {
        "name": "demcompare", "compared_cells": int(area.sum()), "outliers": outliers,
        "slope": "100 x atan(Sobel gradient / 8), in centiradians; great-circle pixel distances on a 6378137 m "
                 "sphere for geographic grids; on the compared area's bounding box, borders reflected",
        "compared_area": "cells valid before and after the co-registration shift",
        "sign": "residual = prediction - truth; demcompare reports ref - sec (mean, median, min, max flip sign)",
    }
    return residual, keep, slope


def _class_zones(grid, classes, class_polygons, class_field, class_points, class_points_crs):
    if classes is not None:
        return zones_from_class_raster(classes, grid)
    if class_polygons is not None:
        return zones_from_polygons(class_polygons, grid, class_field)
    if class_points:
        return zones_from_points(class_points, grid, assume_crs=class_points_crs)
    return None


def _s(value):
    return None if value is None else str(value)
