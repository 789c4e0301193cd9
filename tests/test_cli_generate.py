"""``geoimplicit generate``: the truth rasters say their height unit."""

from __future__ import annotations

import pytest
import rasterio


@pytest.mark.parametrize("crs,unit", [("EPSG:2154", "m"), ("EPSG:2994", "ft")])
def test_generated_height_rasters_have_a_band_unit(tmp_path, cli, crs, unit):
    out = tmp_path / "city"
    result = cli("generate", out, "--size", 24, "--no-points", "--crs", crs)
    assert result.exit_code == 0, result.output
    for name in ("truth_dsm.tif", "dtm.tif"):
        with rasterio.open(out / name) as ds:
            assert ds.units == (unit,), name
    with rasterio.open(out / "classes.tif") as ds:
        assert not ds.units[0]  # class codes have no unit
