"""bench/surface.py runs on the CPU at a tiny size and measures what it says: the perturbation it applies is the
known one (every train camera exactly 0.1 deg and 1 m off before refinement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_surface_tiny_cpu_run(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "surface.py"), "--small", "--steps", "4",
                           "--variants", "exact", "refine1", "--no-baselines", "--device", "cpu", "-o",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "surface.json").read_text())
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {"exact", "refine1"}
    before = runs["refine1"]["pose_before"]["none"]
    assert abs(before["mean_rotation_deg"] - 0.1) < 1e-6 and abs(before["max_rotation_deg"] - 0.1) < 1e-6
    assert abs(before["mean_centre_m"] - 1.0) < 1e-6
    assert runs["exact"]["pose_before"]["none"]["mean_centre_m"] < 1e-6
    assert "pose_after" in runs["refine1"] and "pose_after" not in runs["exact"]
    for r in runs.values():
        assert r["steps"] == 4 and 5 < r["heldout_psnr"] < 60
        assert r["dsm"]["valid"] > 0.5 and r["chamfer"]["points"] > 10
    assert (tmp_path / "surface.log").exists()
