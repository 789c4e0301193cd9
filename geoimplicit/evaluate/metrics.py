"""Statistics of a height residual (prediction minus truth), as demcompare, ASP geodiff and ImpliCity report them.

Every statistic is computed on the finite values only; the residual is ``prediction - truth`` so a positive
bias means the prediction is too high. Thresholds and errors are in the DSM's own height units.

>>> import numpy as np
>>> s = residual_stats(np.array([-1.0, 0.0, 1.0, 2.0]))
>>> s["count"], s["bias"], s["rmse"] ** 2
(4, 0.5, 1.5)
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

#: Absolute-error percentiles reported as LE68, LE90, LE95, LE99 (linear error at that confidence level).
PERCENTILES = (68, 90, 95, 99)
#: Fractions of cells whose absolute error is at most these values (CRS / height units).
THRESHOLDS = (0.5, 1.0, 2.0)
#: 1 / Phi^-1(3/4): makes the median absolute deviation a consistent estimator of the standard deviation.
NMAD_FACTOR = 1.4826

STAT_KEYS = (
    "count", "bias", "median", "std", "mae", "rmse", "median_abs_error", "nmad",
    *(f"le{p}" for p in PERCENTILES),
    *(f"within_{t:g}" for t in THRESHOLDS),
    "min", "max",
)


def nmad(values: np.ndarray) -> float:
    """Normalised median absolute deviation: ``1.4826 * median(|e - median(e)|)`` of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(NMAD_FACTOR * np.median(np.abs(values - np.median(values))))


def residual_stats(
    residual: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    thresholds: Iterable[float] = THRESHOLDS,
    percentiles: Iterable[float] = PERCENTILES,
) -> dict[str, float | int]:
    """Statistics of the residual values where ``mask`` is True (all finite values when ``mask`` is None).

    Args:
        residual: prediction minus truth, any shape; NaN / inf are ignored.
        mask: boolean array of the same shape; True = use this cell.
        thresholds: absolute errors for the ``within_T`` fractions.
        percentiles: absolute-error percentiles reported as ``leP`` (numpy's linear interpolation).

    Returns:
        ``count`` (int), ``bias`` (mean), ``median``, ``std`` (population, ddof=0), ``mae`` (mean |e|),
        ``rmse``, ``median_abs_error`` (median |e|), ``nmad``, ``le68``..``le99`` (percentiles of |e|),
        ``within_0.5``, ``within_1``, ``within_2`` (fractions in [0, 1]), ``min``, ``max``.
        With no values, ``count`` is 0 and every other entry is NaN.
    """
    values = np.asarray(residual, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} differs from residual shape {values.shape}")
        values = values[mask]
    values = values[np.isfinite(values)].ravel()
    thresholds = tuple(thresholds)
    percentiles = tuple(percentiles)
    out: dict[str, float | int] = {"count": int(values.size)}
    if values.size == 0:
        for key in STAT_KEYS[1:]:
            out[key] = math.nan
        for p in percentiles:
            out[f"le{p:g}"] = math.nan
        for t in thresholds:
            out[f"within_{t:g}"] = math.nan
        return out
    abs_values = np.abs(values)
    median = float(np.median(values))
    out.update(
        bias=float(values.mean()),
        median=median,
        std=float(values.std()),
        mae=float(abs_values.mean()),
        rmse=float(math.sqrt(float(np.mean(values * values)))),
        median_abs_error=float(np.median(abs_values)),
        nmad=float(NMAD_FACTOR * np.median(np.abs(values - median))),
    )
    for p, v in zip(percentiles, np.percentile(abs_values, percentiles)):
        out[f"le{p:g}"] = float(v)
    for t in thresholds:
        out[f"within_{t:g}"] = float(np.count_nonzero(abs_values <= t) / values.size)
    out["min"] = float(values.min())
    out["max"] = float(values.max())
    return out
