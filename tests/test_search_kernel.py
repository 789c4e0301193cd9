"""The fused Triton surface search (geoimplicit.dsm.occupancy.search_kernel) against an analytic field and
against the torch search; on this CPU through Triton's interpreter (float32 dots: its bfloat16 dot is not
emulated), in a subprocess because the interpreter must be chosen before the kernel module is imported."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from geoimplicit.dsm.occupancy import search_kernel
from geoimplicit.dsm.occupancy.decoder import OccupancyDecoder
from geoimplicit.dsm.occupancy.infer import resolve_search_kernel

needs_triton = pytest.mark.skipif(not search_kernel.triton_installed(), reason="Triton is not installed")


def run_interpreted(code: str) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_cpu_runs_use_torch_and_bad_settings_are_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dec = OccupancyDecoder()
    cpu = torch.device("cpu")
    assert resolve_search_kernel("auto", cpu, dec) == "torch"
    monkeypatch.setenv("GEOIMPLICIT_SEARCH_KERNEL", "torch")
    assert resolve_search_kernel("auto", cpu, dec) == "torch"
    with pytest.raises(ValueError, match="one of auto, triton, torch"):
        resolve_search_kernel("cuda-graphs", cpu, dec)
    with pytest.raises(ValueError, match="needs CUDA and Triton"):
        resolve_search_kernel("triton", cpu, dec)
    assert not search_kernel.supports(OccupancyDecoder(hidden=24))


@needs_triton
def test_fused_search_finds_an_analytic_surface():
    # a decoder whose logit is relu(h - z) - 0.001: occupied below the column's height h, given as its context
    out = run_interpreted("""
        import torch
        from geoimplicit.dsm.occupancy.decoder import OccupancyDecoder
        from geoimplicit.dsm.occupancy.search_kernel import fused_search
        dec = OccupancyDecoder(32, 32, 4, use_prior=True)
        with torch.no_grad():
            for p in dec.parameters():
                p.zero_()
            dec.fc_p.weight[0, 0] = -1.0   # net[0] = -z
            dec.fc_out.weight[0, 0] = 1.0
            dec.fc_out.bias[0] = -1e-3
        M = 200
        h = torch.linspace(-1.5, 2.5, M)   # below, inside and above the search range [-1, 2]
        ctx = [torch.zeros(M, 32) for _ in range(4)]
        ctx[0][:, 0] = h
        lo, hi = torch.full((M,), -1.0), torch.full((M,), 2.0)
        height, found, sat = fused_search(dec, ctx, torch.zeros(M), lo, hi, coarse_steps=16, refine_steps=10,
                                          dot_bf16=False)
        inside = (h > -1.0 + 2e-3) & (h < 2.0 - 2e-3)
        tol = 3.0 / 15 / 2 ** 10 + 1e-5
        assert (found == (h > -1.0 + 1e-3)).all(), (found, h)
        assert (sat == (h > 2.0 + 1e-3)).all()
        err = (height - (h - 1e-3))[inside].abs().max().item()
        assert err <= tol, err
        assert (height[sat] == 2.0).all()
        with torch.no_grad():  # weights changed between calls (a model in training) are the ones used
            dec.fc_out.bias[0] = -0.5
        moved, _, _ = fused_search(dec, ctx, torch.zeros(M), lo, hi, coarse_steps=16, refine_steps=10,
                                   dot_bf16=False)
        inner = (h > -0.5 + 2e-3) & (h < 2.0 - 2e-3)
        assert (moved - (h - 0.5))[inner].abs().max().item() <= tol
        print("max error", err, "tolerance", tol)
    """)
    assert "max error" in out


@needs_triton
def test_fused_search_matches_the_torch_search_on_a_real_tile():
    # the shipped model on a generated tile (a seed outside the training range), float32 both ways
    out = run_interpreted("""
        import numpy as np
        from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
        from geoimplicit.synthetic.city import generate_city, scene_bounds
        from geoimplicit.synthetic.points import iter_point_chunks
        b = scene_bounds(24.0, crs="EPSG:2154")
        city = generate_city(2001, bounds=b, resolution=0.5, crs="EPSG:2154")
        pts = next(iter(iter_point_chunks(city, 1, density=10.0)))
        x, y, z = (np.asarray(pts[k], np.float64) for k in "xyz")
        res = {}
        for kernel in ("torch", "triton"):
            p = OccupancyPredictor(None, "cpu", search_kernel=kernel)
            assert p.search_kernel == kernel
            res[kernel] = p.search_tile(p.frame_tile(x, y, z, core_bounds=b, resolution=0.5))
        (h0, v0), (h1, v1) = res["torch"], res["triton"]
        assert v0.mean() > 0.9 and (v0 == v1).all()
        d = np.abs(h0 - h1)[v0]
        # one bisection step of the tile's search range (a few mm) where rounding flips a sample's sign
        assert d.max() < 0.01 and np.mean(d > 1e-3) < 0.01, (d.max(), np.mean(d > 1e-3))
        print("max", d.max(), "range", float(z.max() - z.min()))
    """)
    assert "max" in out
