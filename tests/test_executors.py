"""Executors: local and a real Dask LocalCluster give the same DSM, also when a worker is killed mid-run."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import numpy as np
import pytest
import rasterio

from geoimplicit.jobs.executors import DaskExecutor, LocalExecutor
from geoimplicit.run import run_dsm
from geoimplicit.synthetic import generate_city, scene_bounds, write_city


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city") / "scene"
    bounds = scene_bounds(160.0, crs="EPSG:2154", resolution=0.5)
    scene = generate_city(11, bounds=bounds, resolution=0.5, crs="EPSG:2154")
    return write_city(scene, out, seed=11, points=True, views=False, density=6.0)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1, masked=True), ds.transform, ds.crs


def _run(city, out, executor, **kw):
    return run_dsm(city["points"], out, resolution=0.5, aoi=city["aoi"], method="raster", tile_size=24.0,
                   overlap=4.0, executor=executor, **kw)


def test_local_executor_prefetch_keeps_order():
    seen = []
    ex = LocalExecutor(lookahead=2)
    out = list(ex.map(lambda job, data: (seen.append(job), data * 10)[1], range(7), prefetch=lambda j: j + 1))
    assert [job for job, _ in out] == list(range(7)) and [r for _, r in out] == [10 * (j + 1) for j in range(7)]
    assert seen == list(range(7))


@pytest.mark.dask
def test_dask_cluster_survives_a_killed_worker(city, tmp_path):
    local = _run(city, tmp_path / "local.tif", LocalExecutor())
    ex = DaskExecutor(n_workers=2)
    try:
        pids = ex.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids
        killed = []

        def kill_one_worker(done, total, stage="", message=""):
            # once the first tiles are back, kill a worker while others are still queued
            if stage == "tiles" and not killed and done >= 3 and done < total - 4:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((done, total))

        dask_out = _run(city, tmp_path / "dask.tif", ex, progress=kill_one_worker)
        assert killed, "the run ended before a worker could be killed: make the scene larger"
        # the cluster replaced or routed around the dead worker and every tile was computed
        assert pids[0] not in ex.worker_pids()
    finally:
        ex.close()
    a, ta, ca = _read(local["dsm"])
    b, tb, cb = _read(dask_out["dsm"])
    assert ta == tb and ca == cb
    assert np.array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.filled(np.nan), b.filled(np.nan))


@pytest.mark.dask
def test_cli_dask_workers_matches_local(city, tmp_path, cli):
    local = cli("dsm", "--points", city["points"], "--aoi", city["aoi"], "--resolution", "1", "--method", "raster",
                "--tile-size", "40", "-o", tmp_path / "local.tif")
    assert local.exit_code == 0, local.output
    dask = cli("dsm", "--points", city["points"], "--aoi", city["aoi"], "--resolution", "1", "--method", "raster",
               "--tile-size", "40", "--dask-workers", "2", "-o", tmp_path / "dask.tif")
    assert dask.exit_code == 0, dask.output
    a, _, _ = _read(tmp_path / "local.tif")
    b, _, _ = _read(tmp_path / "dask.tif")
    np.testing.assert_array_equal(a.filled(np.nan), b.filled(np.nan))


# ------------------------------------------------------------------------------- one Dask worker per GPU
def test_gpu_assignment():
    from geoimplicit.errors import InputError
    from geoimplicit.jobs.executors import gpu_assignment

    assert gpu_assignment(2, 1, visible="3,5") == ["3", "5"]
    assert gpu_assignment(2, 2, visible="0,1,2,3") == ["0,1", "2,3"]
    assert gpu_assignment(None, 1, device_count=4) == ["0", "1", "2", "3"]  # as many workers as GPUs
    assert gpu_assignment(None, 2, visible="4, 6, 7") == ["4,6"]
    with pytest.raises(InputError, match="3 workers x 1 GPU need 3 GPUs, 2 are visible"):
        gpu_assignment(3, 1, visible="0,1")
    assert gpu_assignment(2, 1, device_count=0) == ["0", "1"]  # no GPU here: pinned anyway, the jobs use the CPU


def _visible_devices(job, *_):
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@dataclass
class _Job:
    tile_id: str


@pytest.mark.dask
def test_pinned_gpu_workers_survive_a_killed_worker(city, tmp_path, monkeypatch):
    """``--gpus-per-worker 1``: each worker process sees only its own device (the driver's visible devices 3
    and 5 here), offers a GPU resource of 1, takes the GPU jobs; a worker killed mid-run comes back pinned to the
    same device and its tiles are redone, giving the local run's DSM."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    local = _run(city, tmp_path / "local.tif", LocalExecutor())
    ex = DaskExecutor(n_workers=2, gpus_per_worker=1, pin_gpus=True)
    try:
        assert sorted(ex.worker_environ("CUDA_VISIBLE_DEVICES").values()) == ["3", "5"]
        workers = ex.client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in workers] == [{"GPU": 1}, {"GPU": 1}]
        ran_on = [r for _, r in ex.map(_visible_devices, [_Job(f"t{i}") for i in range(6)], needs_gpu=True)]
        assert set(ran_on) <= {"3", "5"} and len(ran_on) == 6
        pids = ex.worker_pids()
        killed = []

        def kill_one_worker(done, total, stage="", message=""):
            if stage == "tiles" and not killed and 3 <= done < total - 4:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(done)

        dask_out = _run(city, tmp_path / "dask.tif", ex, progress=kill_one_worker)
        assert killed, "the run ended before a worker could be killed: make the scene larger"
        assert pids[0] not in ex.worker_pids()
        assert sorted(ex.worker_environ("CUDA_VISIBLE_DEVICES").values()) == ["3", "5"]  # the new one is pinned too
    finally:
        ex.close()
    a, *_ = _read(local["dsm"])
    b, *_ = _read(dask_out["dsm"])
    np.testing.assert_array_equal(a.filled(np.nan), b.filled(np.nan))


@pytest.mark.dask
def test_cli_gpus_per_worker_matches_local(city, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    args = ["dsm", "--points", city["points"], "--aoi", city["aoi"], "--resolution", "1", "--method", "raster",
            "--tile-size", "40"]
    assert cli(*args, "-o", tmp_path / "local.tif").exit_code == 0
    r = cli(*args, "--dask-workers", "2", "--gpus-per-worker", "1", "-o", tmp_path / "pinned.tif")
    assert r.exit_code == 0, r.output
    a, _, _ = _read(tmp_path / "local.tif")
    b, _, _ = _read(tmp_path / "pinned.tif")
    np.testing.assert_array_equal(a.filled(np.nan), b.filled(np.nan))
    r = cli(*args, "--dask-workers", "3", "--gpus-per-worker", "1", "-o", tmp_path / "x.tif")
    assert r.exit_code == 2 and "3 workers x 1 GPU need 3 GPUs, 2 are visible" in r.stderr


def _frozen_in_worker(_) -> int:
    import gc

    return gc.get_freeze_count()


def test_forked_pool_workers_do_not_collect_the_parents_objects():
    """A full collection in a forked worker wrote to every object it inherited, copying the parent's pages into
    each worker; the pool's workers see those objects frozen, and the parent gets them back after."""
    import gc

    from geoimplicit.cores import forked_pool

    keep = [[i] for i in range(1000)]  # tracked objects of the parent
    with forked_pool(2) as pool:
        frozen = list(pool.map(_frozen_in_worker, range(2)))
    assert min(frozen) >= len(keep) and gc.get_freeze_count() == 0


def test_device_threads_overlap_jobs_keep_order_and_load_each_once():
    import threading
    import time

    lock, now, peak, loads = threading.Lock(), [0], [0], []

    def fn(job, data):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02 * (job % 3))  # uneven jobs: a later one may finish first
        with lock:
            now[0] -= 1
        return data * 10

    def prefetch(job):
        with lock:
            loads.append(job)
        return job + 1

    out = list(LocalExecutor(lookahead=3, device_threads=2).map(fn, range(12), prefetch=prefetch))
    assert [job for job, _ in out] == list(range(12)) and [r for _, r in out] == [10 * (j + 1) for j in range(12)]
    assert sorted(loads) == list(range(12))  # each job's inputs read once
    assert peak[0] == 2


def test_device_threads_error_is_raised_in_job_order():
    def fn(job, data):
        if job == 3:
            raise ValueError("tile 3")
        return data

    seen = []
    with pytest.raises(ValueError, match="tile 3"):
        for job, _ in LocalExecutor(lookahead=2, device_threads=2).map(fn, range(8), prefetch=lambda j: j):
            seen.append(job)
    assert seen == [0, 1, 2]


def test_occupancy_two_tiles_in_flight_give_the_same_dsm(city, tmp_path):
    """The occupancy method's device work run in two threads at once (what a GPU run does) changes no pixel."""
    b = scene_bounds(160.0, crs="EPSG:2154", resolution=0.5)
    bbox = (b[0] + 32, b[1] + 32, b[0] + 96, b[1] + 96)
    dsms = []
    for n in (1, 2):
        out = tmp_path / f"occ{n}.tif"
        run_dsm(city["points"], out, resolution=0.5, bbox=bbox, method="occupancy", tile_size=32.0, overlap=8.0,
                method_options={"device": "cpu", "refiner": "auto"}, executor=LocalExecutor(device_threads=n))
        dsms.append(_read(out)[0])
    assert dsms[0].count() > 0.9 * dsms[0].size
    np.testing.assert_array_equal(dsms[0].filled(np.nan), dsms[1].filled(np.nan))


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_failed_job_releases_what_the_running_jobs_wait_on_before_waiting_for_them(in_flight):
    """``on_abort`` is told before the executor waits for the jobs still running (the routing behind the tiles
    is stopped that way): without it the jobs waiting in their prefetch would hold the run for their timeout."""
    import threading
    import time

    from geoimplicit.jobs.executors import LocalExecutor

    gate = threading.Event()

    def prefetch(job):
        if job > 0:
            gate.wait(30)  # a tile waiting for its points
        return job

    def fn(job, data):
        if job == 0:
            raise ValueError("tile 0 failed")
        return data

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="tile 0 failed"):
        list(LocalExecutor(threads=2, device_threads=in_flight).map(fn, [0, 1, 2], prefetch=prefetch,
                                                                     needs_gpu=True, on_abort=gate.set))
    assert gate.is_set() and time.perf_counter() - t0 < 10
