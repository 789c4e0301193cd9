"""Learning-rate schedules shared by the fits (MPI, SDF, test-time pose alignment) and the trainings (occupancy
network, MPI prior)."""

from __future__ import annotations

import math

__all__ = ["cosine_decay"]


def cosine_decay(frac: float, floor: float = 0.1) -> float:
    """The learning-rate factor at fraction ``frac`` of a run (clamped to [0, 1]): 1 falling along a half cosine
    to ``floor``."""
    frac = min(max(float(frac), 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * frac))
