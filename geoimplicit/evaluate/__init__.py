"""DSM accuracy evaluation: alignment, residual statistics, per-class / slope / tile splits, Nuth and Kaab
co-registration, and the report folder (JSON, CSV, HTML with figures, residual GeoTIFF)."""

from geoimplicit.evaluate.align import AlignedPair, align_to_truth
from geoimplicit.evaluate.coregister import CoregistrationResult, nuth_kaab, shift_array
from geoimplicit.evaluate.metrics import nmad, residual_stats
from geoimplicit.evaluate.pipeline import evaluate_dsm

__all__ = [
    "AlignedPair", "CoregistrationResult", "align_to_truth", "evaluate_dsm", "nmad", "nuth_kaab",
    "residual_stats", "shift_array",
]
