"""One call from two DSMs to an accuracy report folder (what ``geoimplicit eval`` runs)."""

from __future__ import annotations

import logging
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


def zone_stats(residual: np.ndarray, zones: list[Zone], label: str) -> list[dict]:
    """Statistics of the residual in each zone, with the zone's descriptive fields."""
    out = []
    valid = np.isfinite(residual)
    for zone in zones:
        stats = residual_stats(residual, zone.mask & valid)
        out.append({label: zone.name, **zone.fields, "cells": int(zone.mask.sum()), **stats})
    return out


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
    slope_bands=SLOPE_BANDS_PERCENT,
    coregister: bool = False,
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
        slope_bands: slope band edges in percent of the truth's slope (last band open-ended).
        coregister: estimate the horizontal shift with Nuth and Kaab and compute statistics after it.
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
    coreg = None
    if coregister:
        progress(1, total, "eval", "co-registering")
        before = pair.residual
        coreg = nuth_kaab(pair.prediction, pair.truth, grid.transform, grid.crs,
                          metres_per_unit=units["metres_per_unit"] or 1.0,
                          crs_units=units["horizontal"], cancel=cancel)
        report["overall_before_coregistration"] = residual_stats(before)
        report["overlap_before_coregistration"] = pair.overlap()
        # apply the shift to the original prediction in one resampling (its own CRS units: the grids share one
        # CRS here, or the prediction was warped and the offset is in the truth's CRS units)
        if same_crs(pair.grid.crs, read_crs(prediction)):
            pair = align_to_truth(prediction, truth, reproject=reproject,
                                  prediction_offset_crs=(coreg.dx_crs, coreg.dy_crs))
        else:  # warped prediction: shift it on the truth's grid
            pair.prediction = shift_array(pair.prediction, coreg.dx_px, coreg.dy_px)
        report["coregistration"] = {"method": "Nuth and Kaab 2011 (iterated)", **coreg.to_dict()}
    else:
        report["coregistration"] = None
    residual = pair.residual
    report["overlap"] = pair.overlap()
    progress(2, total, "eval", "statistics")
    report["overall"] = residual_stats(residual)

    zones = None
    if classes is not None:
        zones = zones_from_class_raster(classes, grid)
    elif class_polygons is not None:
        zones = zones_from_polygons(class_polygons, grid, class_field)
    elif class_points:
        zones = zones_from_points(class_points, grid, assume_crs=class_points_crs)
    if zones is not None:
        zones = dilate_buildings(zones, int(dilate_buildings_px), building_class)
        report["per_class"] = zone_stats(residual, zones, "class")
    check_cancel(cancel)
    if slope_bands:
        report["per_slope_band"] = zone_stats(residual, slope_band_zones(pair.truth, grid, slope_bands), "band")
    if tiles is not None:
        report["per_tile"] = zone_stats(residual, tile_zones(tiles, grid), "tile")
    report["options"] = {"classes": _s(classes), "class_polygons": _s(class_polygons), "class_field": class_field,
                         "class_points": [str(p) for p in class_points] if class_points else None,
                         "class_points_crs": _s(class_points_crs),
                         "dilate_buildings_px": int(dilate_buildings_px), "building_class": _s(building_class),
                         "tiles": _s(tiles),
                         "slope_bands_percent": list(slope_bands) if slope_bands else None,
                         "coregister": coregister, "reproject": reproject}
    check_cancel(cancel)
    if output_dir is not None:
        progress(3, total, "eval", "writing the report")
        paths = write_report(output_dir, report, residual, grid, overwrite=overwrite, figures=figures,
                             inputs=inputs)
        report["paths"] = {k: str(v) for k, v in paths.items()}
    progress(total, total, "eval", "done")
    return report


def _s(value):
    return None if value is None else str(value)
