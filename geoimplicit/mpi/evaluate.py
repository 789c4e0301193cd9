"""Evaluate a fitted MPI on the test views of a view set: PSNR, SSIM, depth error; JSON and an HTML page."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import numpy as np
import torch

from geoimplicit.errors import CameraFileError
from geoimplicit.io.cameras import ViewSet
from geoimplicit.mpi.metrics import psnr, ssim
from geoimplicit.mpi.render import write_png
from geoimplicit.outputs import atomic_output
from geoimplicit.progress import check_cancel

log = logging.getLogger(__name__)

__all__ = ["evaluate_views", "align_pose_to_scene"]


def align_pose_to_scene(scene, camera, image: np.ndarray, steps: int = 200, lr: float = 0.05):
    """``camera`` (world coordinates) with its pose refined against the frozen MPI ``scene`` so that its render
    matches ``image`` (H, W, 3): ``steps`` Adam steps of the L1 loss, on renders and image averaged over blocks of
    2^k pixels for the first half (k from 4 to 0), the learning rate (pixels of image motion a step) decaying.

    BARF's and NeRF--'s test-time protocol for fits whose cameras were refined: a held-out camera from the same
    source as the train ones sits in a slightly different frame than the fit's (a deformation of the whole block
    that the train views cannot show); aligned first, the held-out PSNR scores the scene, not that frame.
    """
    from geoimplicit.geometry.pose import CameraOptimizerConfig, camera_optimizer
    from geoimplicit.geometry.tensors import camera_tensors
    from geoimplicit.mpi.composite import render_mpi
    from geoimplicit.mpi.fit import block_average, pyramid_level
    from geoimplicit.schedules import cosine_decay

    mpi, A = scene.mpi(), scene.planes.A
    local = camera.with_origin(scene.origin)
    local.width, local.height = image.shape[1], image.shape[0]
    rc = camera_tensors(local, None, device=scene.device, width=image.shape[1], height=image.shape[0])
    pose = camera_optimizer(CameraOptimizerConfig(mode="SO3xR3", gauge="none"), [local]).to(scene.device)
    opt = torch.optim.Adam([pose.pose_adjustment], lr=lr)
    target = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(scene.device)
    for step in range(steps):
        rgb = render_mpi(mpi, A, pose.apply(rc, 0))["rgb"]
        rgb, ref = block_average((rgb, target), pyramid_level(step / steps, 0.5, 4))
        loss = (rgb - ref).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.param_groups[0]["lr"] = lr * cosine_decay(step / steps)
        opt.step()
    aligned = local.moved(pose.motion_inverses_numpy()[0]).with_origin(-np.asarray(scene.origin))
    aligned.width, aligned.height = camera.width, camera.height
    return aligned


def _error_image(err: np.ndarray, vmax: float) -> np.ndarray:
    t = np.clip(err / max(vmax, 1e-9), 0, 1)
    try:
        import matplotlib

        return matplotlib.colormaps["inferno"](t)[..., :3]
    except ImportError:  # black -> red -> yellow -> white
        return np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], -1)


def evaluate_views(
    model_dir, views_dir, out_dir, *, ids=None, device="auto", overwrite=False, fused=False, align_poses: int = 0,
    progress=None, cancel=None
) -> dict:
    """Render the test views (``view_split.txt``) and compare; writes ``report.json`` and ``index.html``.

    ``align_poses`` > 0: each test camera is first aligned to the fitted MPI in that many steps
    (:func:`align_pose_to_scene`); the metrics are then those of the aligned render, ``psnr_given_pose`` that of
    the given camera, and ``pose_shift_px`` how far the alignment moved the view (mean over a 5 x 5 grid).
    Returns the report dict (``views``: per-view metrics, ``mean``: averages, ``outputs``: paths).
    """
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.scene import MPIScene

    scene = MPIScene.load(model_dir, resolve_device(device))
    views = ViewSet.load(views_dir)
    ids = list(ids or views.test_ids)
    if not ids:
        raise CameraFileError("no test views to evaluate", path=views.root,
                              hint="list test ids in view_split.txt (train count, ids, test count, ids)")
    out_dir = Path(out_dir)
    rows = []
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "images").mkdir(parents=True)
        for k, vid in enumerate(ids):
            check_cancel(cancel)
            cam = views.cameras[vid]
            truth = views.read_image(vid)
            true_t = torch.from_numpy(truth).permute(2, 0, 1)
            extra = {}
            if align_poses:
                given = scene.render(cam, width=truth.shape[1], height=truth.shape[0], fused=fused)["rgb"]
                extra["psnr_given_pose"] = psnr(torch.from_numpy(given).permute(2, 0, 1), true_t)
                aligned = align_pose_to_scene(scene, cam, truth, align_poses)
                extra["pose_shift_px"] = _pose_shift_px(aligned, cam)
                cam = aligned
            out = scene.render(cam, width=truth.shape[1], height=truth.shape[0], fused=fused)
            pred_t = torch.from_numpy(out["rgb"]).permute(2, 0, 1)
            row = {"id": vid, "psnr": psnr(pred_t, true_t), "ssim": float(ssim(pred_t, true_t)), **extra}
            err = np.abs(out["rgb"] - truth).mean(-1)
            write_png(tmp / "images" / f"{vid}_render.png", out["rgb"])
            write_png(tmp / "images" / f"{vid}_true.png", truth)
            write_png(tmp / "images" / f"{vid}_error.png", _error_image(err, 0.25))
            dtrue = views.read_depth(vid)
            if dtrue is not None and dtrue.shape == out["depth"].shape:
                valid = np.isfinite(dtrue) & (out["opacity"] > 0.5)
                if valid.any():
                    d = out["depth"][valid] - dtrue[valid]
                    row.update(depth_mae=float(np.mean(np.abs(d))), depth_rmse=float(np.sqrt(np.mean(d**2))),
                               depth_median_abs=float(np.median(np.abs(d))), depth_valid_fraction=float(valid.mean()))
                    derr = np.where(valid, np.abs(out["depth"] - np.nan_to_num(dtrue)), 0)
                    write_png(tmp / "images" / f"{vid}_depth_error.png",
                              _error_image(derr, max(1e-6, float(np.percentile(derr[valid], 95)))))
            rows.append(row)
            if progress is not None:
                progress(k + 1, len(ids), "eval", f"{vid}: {row['psnr']:.2f} dB")
        keys = [k for k in ("psnr", "ssim", "psnr_given_pose", "pose_shift_px", "depth_mae", "depth_rmse",
                            "depth_median_abs") if all(k in r for r in rows)]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        report = {"model_dir": str(Path(model_dir).resolve()), "views_dir": str(Path(views_dir).resolve()),
                  "test_ids": ids, "test_pose_alignment_steps": int(align_poses), "mean": mean, "views": rows}
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "index.html").write_text(_html(report))
    report["outputs"] = {"report": str(out_dir / "report.json"), "html": str(out_dir / "index.html")}
    return report


def _pose_shift_px(moved, given) -> float:
    """Mean image distance (pixels) between where ``moved`` and ``given`` see the points ``given`` sees at mid
    depth on a 5 x 5 grid of its image."""
    from geoimplicit.geometry.align import camera_errors

    return camera_errors([moved], [given])["mean_reprojection_px"]


def _html(report: dict) -> str:
    mean = report["mean"]
    head = " &middot; ".join(f"{k} {v:.4g}" for k, v in mean.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>geoimplicit nvs eval</title>",
        "<style>body{font-family:sans-serif}img{width:256px;image-rendering:pixelated}td{padding:4px}</style>",
        f"</head><body><h1>MPI evaluation</h1><p>{html.escape(report['model_dir'])}</p><p>mean: {head}</p>",
        "<table><tr><th>view</th><th>rendered</th><th>true</th><th>|error| (0-0.25)</th><th>depth error</th>"
        "<th>metrics</th></tr>",
    ]
    for r in report["views"]:
        vid = html.escape(r["id"])
        metrics = "<br>".join(f"{k}: {v:.4g}" for k, v in r.items() if k != "id")
        depth = f"<img src='images/{vid}_depth_error.png'>" if "depth_mae" in r else ""
        parts.append(
            f"<tr><td>{vid}</td><td><img src='images/{vid}_render.png'></td><td><img src='images/{vid}_true.png'></td>"
            f"<td><img src='images/{vid}_error.png'></td><td>{depth}</td><td>{metrics}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)
