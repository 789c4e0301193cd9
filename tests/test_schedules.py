"""The one learning-rate schedule of the fits and trainings."""

from __future__ import annotations

import math

import pytest

from geoimplicit.schedules import cosine_decay


@pytest.mark.parametrize("floor", [0.1, 0.05])
def test_cosine_decay_falls_from_one_to_its_floor_along_a_half_cosine(floor):
    assert cosine_decay(0.0, floor) == 1.0
    assert cosine_decay(1.0, floor) == pytest.approx(floor, abs=1e-15)
    assert cosine_decay(0.5, floor) == pytest.approx((1 + floor) / 2)
    assert cosine_decay(0.25, floor) == pytest.approx(floor + (1 - floor) * (1 + math.sqrt(0.5)) / 2)
    values = [cosine_decay(k / 20, floor) for k in range(21)]
    assert all(a > b for a, b in zip(values, values[1:]))
    # past the end (a time budget overrun) it stays at the floor instead of rising again
    assert cosine_decay(1.3, floor) == cosine_decay(1.0, floor) and cosine_decay(-0.2, floor) == 1.0


def test_cosine_decay_gives_the_former_inline_formulas_bit_for_bit():
    for k in range(101):
        f = k / 100
        assert cosine_decay(f) == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f))
        assert cosine_decay(f, floor=0.05) == 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f))
