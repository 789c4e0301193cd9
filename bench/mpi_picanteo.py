"""Qualitative check on real satellite views: a geo-MPI fitted to the Picanteo pre-event pair (affine cameras).

    python -m bench.mpi_picanteo [--scale 0.25] [--steps 300] [--out docs/img/mpi_picanteo.png]

Reads ``../shared/data/picanteo/{pre,post}_event_img{1,2}.tif`` (1000x1000 uint16 panchromatic crops) and their
affine cameras (``../shared/data/derived/affine_cameras_picanteo.json``), fits 32 horizontal planes between the
cameras' fit height range (550-850 m) over the fit box on the two pre-event views (``colour_share 0.8``), and
renders all four cameras. Writes a montage (rows: views; columns: rendered, true) and prints PSNR per view.
The post-event views are novel cameras of a later date (the scene changed), so their PSNR is only indicative.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoimplicit.geometry import camera_tensors
from geoimplicit.io.cameras import read_affine_cameras
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.fit import plane_sweep_mean, sweep_density
from geoimplicit.mpi.metrics import psnr, ssim
from geoimplicit.mpi.model import DirectMPI
from geoimplicit.mpi.planes import geo_planes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def main(argv=None):
    import rasterio
    from PIL import Image

    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--planes", type=int, default=32)
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "mpi_picanteo.png"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    doc = json.loads((DATA / "derived" / "affine_cameras_picanteo.json").read_text())["sets"]["picanteo"]
    cams = read_affine_cameras(DATA / "derived" / "affine_cameras_picanteo.json")
    names = ["pre_event_img1.tif", "pre_event_img2.tif", "post_event_img1.tif", "post_event_img2.tif"]
    raw = [rasterio.open(DATA / "picanteo" / n).read(1).astype(np.float64) for n in names]
    lo, hi = np.percentile(np.concatenate([r.ravel() for r in raw[:2]]), [1, 99])
    imgs, rcs = [], []
    e0, n0, e1, n1 = doc["fit_bbox_ENU"]
    h0, h1 = doc["fit_height_range_m"]
    origin = np.array([(e0 + e1) / 2, (n0 + n1) / 2, (h0 + h1) / 2])
    for n, r in zip(names, raw):
        t = torch.from_numpy(np.clip((r - lo) / (hi - lo), 0, 1)).float()[None, None]
        cam = cams[n]
        if cam.width is None:
            cam.width, cam.height = r.shape[1], r.shape[0]
        cam = cam.scaled(args.scale)
        t = F.interpolate(t, size=(cam.height, cam.width), mode="area")[0].expand(3, -1, -1).contiguous()
        imgs.append(t)
        rcs.append(camera_tensors(cam, origin))
    gsd = 1.0 / float(np.linalg.norm(cams[names[0]].P[0, :3]) * args.scale)
    planes = geo_planes((e0 - origin[0], n0 - origin[1], e1 - origin[0], n1 - origin[1]), gsd,
                        h0 - origin[2], h1 - origin[2], args.planes, origin=origin)
    model = DirectMPI(planes.num_planes, planes.height, planes.width, 1.0 / planes.spacing)
    mean, var, cnt = plane_sweep_mean(planes, rcs[:2], imgs[:2], "cpu", return_variance=True)
    dens = sweep_density(var, cnt)
    best = dens.argmax(0)[None, None].expand(1, 3, -1, -1)
    model.init_colour(torch.gather(mean, 0, best).expand_as(mean).contiguous())
    model.init_density(dens)
    model.colour_share = 0.8
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for step in range(args.steps):
        loss = 0.0
        for k in (0, 1):
            out = render_mpi(model(), planes.A, rcs[k])["rgb"]
            loss = loss + (out - imgs[k]).abs().mean() + 0.2 * (1 - ssim(out, imgs[k]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.bake_colour_share()
    rows, stats = [], {}
    with torch.no_grad():
        mpi = model()
        for n, rc, t in zip(names, rcs, imgs):
            o = render_mpi(mpi, planes.A, rc)
            m = (o["opacity"] > 0.5).float()  # inside the fit box (the MPI's texture)
            mse = float((((o["rgb"].clamp(0, 1) - t) ** 2).mean(0) * m).sum() / m.sum().clamp_min(1))
            stats[n] = {"psnr": round(float(psnr(o["rgb"].clamp(0, 1), t)), 2),
                        "psnr_in_box": round(-10 * float(np.log10(max(mse, 1e-12))), 2),
                        "covered": round(float(m.mean()), 3)}
            rows.append(np.concatenate([o["rgb"][0].clamp(0, 1).numpy(), np.ones((t.shape[1], 4)),
                                        t[0].numpy()], axis=1))
    sep = np.ones((4, rows[0].shape[1]))
    mont = np.concatenate(sum([[r, sep] for r in rows], [])[:-1], axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray((mont * 255).round().astype(np.uint8), mode="L")
    im = im.resize((round(im.width * 0.8), round(im.height * 0.8)), Image.LANCZOS)
    im.save(args.out, optimize=True)
    print(json.dumps({"texture": [planes.width, planes.height], "gsd_m": round(gsd, 2), "steps": args.steps,
                      **stats}))


if __name__ == "__main__":
    main()
