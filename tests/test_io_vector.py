"""Areas of interest: GeoJSON / GeoPackage / Shapefile in any CRS, bbox, errors."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
from shapely.geometry import LineString, MultiPolygon, Point, box

from geoimplicit.errors import AOIError, CorruptInputError, InputFileNotFoundError
from geoimplicit.io.crs import crs_equal
from geoimplicit.io.vector import read_aoi, write_aoi

L93_BOX = (770510.0, 6277510.0, 770640.0, 6277590.0)


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".shp"])
@pytest.mark.parametrize("file_crs", ["EPSG:2154", "EPSG:4326", "EPSG:32631"])
def test_read_any_format_any_crs(tmp_path, suffix, file_crs):
    geom = box(*L93_BOX)
    if file_crs != "EPSG:2154":
        from geoimplicit.io.vector import reproject_geometry

        geom = reproject_geometry(geom, "EPSG:2154", file_crs)
    path = write_aoi(tmp_path / f"aoi{suffix}", geom, file_crs)
    aoi = read_aoi(path, crs="EPSG:2154")
    assert crs_equal(aoi.crs, "EPSG:2154")
    assert aoi.bounds == pytest.approx(L93_BOX, abs=0.01)  # densified edges come back to the same box
    assert aoi.area == pytest.approx(130 * 80, rel=1e-4)


def test_feet_working_crs(tmp_path):
    path = write_aoi(tmp_path / "aoi.geojson", box(636000, 849000, 636300, 849100), "EPSG:2994")
    m = read_aoi(path, crs="EPSG:32610")
    ft = read_aoi(path, crs="EPSG:2994")
    assert ft.area == pytest.approx(300 * 100)
    assert m.area == pytest.approx(300 * 100 * 0.3048**2, rel=2e-3)  # scale factor of the projections


def test_bbox():
    aoi = read_aoi(bbox=(1, 2, 3, 4), crs="EPSG:32632")
    assert aoi.bounds == (1, 2, 3, 4) and aoi.source == "bbox"
    ll = read_aoi(bbox=(3.87, 43.60, 3.88, 43.61), bbox_crs="EPSG:4326", crs="EPSG:2154")
    x, y = pyproj.Transformer.from_crs(4326, 2154, always_xy=True).transform([3.87, 3.88], [43.60, 43.61])
    assert ll.bounds[0] == pytest.approx(min(x), abs=50) and ll.bounds[3] == pytest.approx(max(y), abs=1)
    with pytest.raises(AOIError, match="inverted"):
        read_aoi(bbox=(3, 4, 1, 2), crs="EPSG:2154")
    with pytest.raises(AOIError, match="no area"):
        read_aoi(crs="EPSG:2154")


def test_geojson_without_crs(tmp_path):
    """RFC 7946: no crs member means WGS 84; coordinates that cannot be degrees are taken in the working CRS."""
    deg = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[3.87, 43.60], [3.88, 43.60], [3.88, 43.61], [3.87, 43.61], [3.87, 43.60]]]}}
    (tmp_path / "deg.geojson").write_text(json.dumps(deg))
    aoi = read_aoi(tmp_path / "deg.geojson", crs="EPSG:2154")
    assert 760000 < aoi.bounds[0] < 780000
    proj = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[770500, 6277500], [770600, 6277500], [770600, 6277600], [770500, 6277500]]]}}
    (tmp_path / "proj.geojson").write_text(json.dumps(proj))
    assert read_aoi(tmp_path / "proj.geojson", crs="EPSG:2154").bounds == (770500, 6277500, 770600, 6277600)


def test_multipolygon_union_and_non_polygons(tmp_path):
    path = write_aoi(tmp_path / "two.gpkg", [box(0, 0, 1, 1), box(5, 5, 6, 6), box(0.5, 0, 2, 1)], "EPSG:32632")
    aoi = read_aoi(path, crs="EPSG:32632")
    assert isinstance(aoi.geometry, MultiPolygon) and aoi.area == pytest.approx(3.0)
    pts = write_aoi(tmp_path / "pts.geojson", [Point(1, 1), LineString([(0, 0), (1, 1)])], "EPSG:32632")
    with pytest.raises(AOIError, match="no polygon"):
        read_aoi(pts, crs="EPSG:32632")


def test_require_overlap():
    aoi = read_aoi(bbox=(0, 0, 10, 10), crs="EPSG:2154")
    aoi.require_overlap((5, 5, 20, 20))
    with pytest.raises(AOIError, match="does not overlap"):
        aoi.require_overlap((100, 100, 200, 200))


def test_file_errors(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="missing.geojson"):
        read_aoi(tmp_path / "missing.geojson", crs="EPSG:2154")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{ this is not json")
    with pytest.raises(CorruptInputError, match="bad.geojson"):
        read_aoi(bad, crs="EPSG:2154")
    gpkg = tmp_path / "bad.gpkg"
    gpkg.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(CorruptInputError, match="bad.gpkg"):
        read_aoi(gpkg, crs="EPSG:2154")


def test_write_aoi_no_clobber(tmp_path):
    from geoimplicit.errors import OutputExistsError

    path = write_aoi(tmp_path / "a.geojson", box(0, 0, 1, 1), "EPSG:2154")
    with pytest.raises(OutputExistsError):
        write_aoi(path, box(0, 0, 2, 2), "EPSG:2154")
    write_aoi(path, box(0, 0, 2, 2), "EPSG:2154", overwrite=True)
    assert read_aoi(path, crs="EPSG:2154").area == pytest.approx(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson"]
