"""Deterministic synthetic city scenes with ground truth, for tests, training and benchmarks.

>>> from geoimplicit.synthetic import generate_city, scene_bounds, sample_points, write_city
>>> scene = generate_city(1, bounds=scene_bounds(64, crs="EPSG:2154"))      # doctest: +SKIP
>>> pts = sample_points(scene, 1, density=10, holes=0.05, outliers=0.005)  # doctest: +SKIP
>>> write_city(scene, "out/city", seed=1, views=True)                       # doctest: +SKIP
"""

from geoimplicit.synthetic.city import (
    BUILDING,
    GROUND,
    VEGETATION,
    CityScene,
    default_origin,
    generate_city,
    scene_bounds,
)
from geoimplicit.synthetic.points import degrade_points, iter_point_chunks, sample_points, write_points
from geoimplicit.synthetic.write import write_city


def render_view_set(*args, **kwargs):
    """Render a LEVIR-NVS view set of a scene (see :func:`geoimplicit.synthetic.views.render_view_set`)."""
    from geoimplicit.synthetic.views import render_view_set as _render

    return _render(*args, **kwargs)


__all__ = [
    "BUILDING", "GROUND", "VEGETATION", "CityScene", "default_origin", "generate_city", "scene_bounds",
    "degrade_points", "iter_point_chunks", "sample_points", "write_points", "write_city", "render_view_set",
]
