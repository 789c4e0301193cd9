"""Rendering an SDF: sphere tracing with IDR's differentiable intersection, and an SDF volume renderer.

**IDR** (Yariv et al. 2020): each ray is sphere-traced to the zero level set (with a fallback that samples the
ray inside the box for the first sign change and refines it by secant steps); the intersection found without
gradients, ``x0 = o + t0 v``, is made differentiable by the implicit-function theorem to first order:
``x = o + t0 v - v / (grad f(x0) . v0) * (f(o + t0 v; theta) - f0)``, with ``f0``, ``grad f(x0)`` and
``v0`` detached; so the colour ``A(x, n(x), v, z(x))`` sends gradients to the SDF (through ``x`` and the normal
``n = grad f(x)``) and to the cameras (through ``o`` and ``v``).

**Volume** (NeuS, Wang et al. 2021): samples along the ray inside the box (stratified, plus samples around the
sphere-traced surface); NeuS's unbiased opacity of each section from the logistic CDF of the SDF at its ends,
colours from the same appearance network at the section mid-points; what is left of the transmittance goes
to a learned background colour.

Both return per ray: ``rgb``, ``depth`` (ray length), ``hit`` (bool), the differentiable surface points and
normals (IDR) or the mid-points (volume) for the regularisers, and, for IDR, the lowest SDF along rays that did
not hit (for the mask-free hit loss).
"""

from __future__ import annotations

import torch

from geoimplicit.surface.networks import sdf_and_gradient

__all__ = ["trace_rays", "render_idr", "render_volume", "BACKGROUND"]

BACKGROUND = (170 / 255, 190 / 255, 215 / 255)  # what rays that meet no surface are drawn with (sky)


@torch.no_grad()
def trace_rays(sdf, o, d, t_near, t_far, *, steps: int = 48, samples: int = 64, eps: float = 1e-3):
    """First zero crossing of ``sdf`` along rays (o, d (N, 3)) within [t_near, t_far] (N,).

    Returns ``t`` (N,), ``hit`` (N,) bool, ``t_min`` (N,): the sampled ray length of the lowest SDF (where
    rays without a hit came closest to the surface). ``eps`` is the convergence tolerance in SDF units.
    """
    n = o.shape[0]
    t = t_near.clone()
    alive = t_far > t_near
    hit = torch.zeros(n, dtype=torch.bool, device=o.device)
    for _ in range(steps):
        idx = torch.nonzero(alive & ~hit).squeeze(1)
        if idx.numel() == 0:
            break
        f = sdf(o[idx] + t[idx, None] * d[idx])
        conv = f.abs() < eps
        hit[idx[conv]] = True
        step = f.clamp_min(0.0) * 0.9  # never step back past the entry: a negative start is found by sampling
        t[idx] = torch.where(conv, t[idx], t[idx] + step)
        gone = t[idx] >= t_far[idx]
        alive[idx[gone]] = False
        stuck = (~conv) & (f <= 0)
        alive[idx[stuck]] = False  # started inside or overshot: sampling below
    t_min = t_near.clone()
    rest = torch.nonzero((t_far > t_near) & ~hit).squeeze(1)
    if rest.numel():
        t_r, hit_r, tmin_r = _sample_first_crossing(sdf, o[rest], d[rest], t_near[rest], t_far[rest], samples)
        t[rest], hit[rest], t_min[rest] = t_r, hit_r, tmin_r
    t_min[hit] = t[hit]
    return t, hit, t_min


def _sample_first_crossing(sdf, o, d, t_near, t_far, samples: int, secant_steps: int = 8):
    """Uniform samples along each ray; the first + to - change of sign, refined by secant steps."""
    n = o.shape[0]
    s = torch.linspace(0.0, 1.0, samples, device=o.device)
    ts = t_near[:, None] + (t_far - t_near)[:, None] * s[None]  # (n, S)
    f = sdf((o[:, None] + ts[..., None] * d[:, None]).reshape(-1, 3)).reshape(n, samples)
    t_min = ts.gather(1, f.argmin(1, keepdim=True))[:, 0]
    inside_first = f[:, 0] < 0  # entered below the surface (a side face): the entry is the hit
    change = (f[:, :-1] > 0) & (f[:, 1:] <= 0)
    has = change.any(1)
    k = change.float().argmax(1)
    lo_t = ts.gather(1, k[:, None])[:, 0]
    hi_t = ts.gather(1, (k + 1)[:, None])[:, 0]
    lo_f = f.gather(1, k[:, None])[:, 0]
    hi_f = f.gather(1, (k + 1)[:, None])[:, 0]
    for _ in range(secant_steps):
        tm = lo_t - lo_f * (hi_t - lo_t) / (hi_f - lo_f).clamp_max(-1e-12)
        fm = sdf(o + tm[:, None] * d)
        pos = fm > 0
        lo_t, lo_f = torch.where(pos, tm, lo_t), torch.where(pos, fm, lo_f)
        hi_t, hi_f = torch.where(pos, hi_t, tm), torch.where(pos, hi_f, fm)
    t = torch.where(has, lo_t - lo_f * (hi_t - lo_t) / (hi_f - lo_f).clamp_max(-1e-12), t_far)
    t = torch.where(inside_first, t_near, t)
    return t, has | inside_first, t_min


def render_idr(sdf_net, colour_net, o, d, t_near, t_far, *, steps=48, samples=64, eps=1e-3, train=True):
    """IDR rendering of rays (o, d (N, 3), differentiable in the cameras) clipped to [t_near, t_far].

    Returns a dict: ``rgb`` (N, 3) (background where no hit), ``depth`` (N,) ray length, ``hit`` (N,),
    ``points`` (M, 3) and ``normals`` (M, 3) of the hits (differentiable), ``f_min`` (N,) the SDF at the
    sampled point of lowest SDF (differentiable; meaningful where not hit).
    """
    sdf = sdf_net.sdf
    o0, d0 = o.detach(), d.detach()
    t0, hit, t_min = trace_rays(sdf, o0, d0, t_near, t_far, steps=steps, samples=samples, eps=eps)
    rgb = torch.tensor(BACKGROUND, device=o.device, dtype=torch.float32).expand(o.shape[0], 3).clone()
    out = {"hit": hit, "depth": torch.where(hit, t0, torch.zeros_like(t0))}
    idx = torch.nonzero(hit).squeeze(1)
    if idx.numel():
        x0 = o0[idx] + t0[idx, None] * d0[idx]
        f0, g0, _ = sdf_and_gradient(sdf_net, x0, create_graph=False)
        f0, g0 = f0.detach(), g0.detach()
        x_theta = o[idx] + t0[idx, None] * d[idx]
        f_theta = sdf(x_theta)
        dot = (g0 * d0[idx]).sum(1)
        dot = torch.where(dot.abs() < 1e-4, torch.full_like(dot, -1e-4), dot)
        x = x_theta - d[idx] / dot[:, None] * (f_theta - f0)[:, None]
        _, g, feat = sdf_and_gradient(sdf_net, x, create_graph=train)
        rgb = rgb.index_put((idx,), colour_net(x, g, d[idx], feat))
        out["points"], out["normals"] = x, g
    else:
        out["points"] = out["normals"] = torch.zeros(0, 3, device=o.device)
    out["rgb"] = rgb
    out["f_min"] = sdf(o + t_min[:, None] * d) if train else None
    return out


def render_volume(sdf_net, colour_net, o, d, t_near, t_far, *, log_inv_s, background, samples=64,
                  surface_samples=16, steps=48, eps=1e-3, train=True, generator=None):
    """NeuS-style volume rendering of rays clipped to [t_near, t_far] (see the module docstring).

    ``log_inv_s``: log of the logistic density's sharpness (per CRS unit); ``background`` (3,) colour of the
    transmittance left at the box's exit. Returns ``rgb``, ``depth`` (expected ray length), ``hit`` (opacity
    > 0.5), ``points`` and ``normals`` (section mid-points, for the eikonal loss), ``f_min`` None.
    """
    n = o.shape[0]
    dev = o.device
    valid = t_far > t_near
    span = (t_far - t_near).clamp_min(1e-6)
    u = torch.rand(n, samples, device=dev, generator=generator) if train else torch.full((n, samples), 0.5, device=dev)
    ts = t_near[:, None] + span[:, None] * (torch.arange(samples, device=dev)[None] + u) / samples
    if surface_samples:
        t0, hit0, _ = trace_rays(sdf_net.sdf, o.detach(), d.detach(), t_near, t_far, steps=steps, samples=samples,
                                 eps=eps)
        width = 4.0 / float(torch.exp(log_inv_s).detach()) + 2.0 * span / samples
        near = t0[:, None] + width[:, None] * torch.linspace(-1.0, 1.0, surface_samples, device=dev)[None]
        near = torch.where(hit0[:, None], near, ts[:, :surface_samples])
        ts = torch.cat([ts, near.clamp(t_near[:, None], t_far[:, None])], 1)
    ts, _ = ts.sort(1)
    ts = torch.cat([t_near[:, None], ts, t_far[:, None]], 1)
    mids = 0.5 * (ts[:, 1:] + ts[:, :-1])
    dt = ts[:, 1:] - ts[:, :-1]
    m = mids.shape[1]
    x = (o[:, None] + mids[..., None] * d[:, None]).reshape(-1, 3)
    f, g, feat = sdf_and_gradient(sdf_net, x, create_graph=train)
    dirs = d[:, None].expand(n, m, 3).reshape(-1, 3)
    colour = colour_net(x, g, dirs, feat).reshape(n, m, 3)
    cos = (g * dirs).sum(1).clamp_max(0.0)  # NeuS: never let a section look like it is leaving the surface
    inv_s = torch.exp(log_inv_s)
    f_prev = f + cos * dt.reshape(-1) * -0.5
    f_next = f + cos * dt.reshape(-1) * 0.5
    c_prev, c_next = torch.sigmoid(f_prev * inv_s), torch.sigmoid(f_next * inv_s)
    alpha = ((c_prev - c_next) / (c_prev + 1e-5)).clamp(0.0, 1.0).reshape(n, m) * valid[:, None]
    trans = torch.cumprod(torch.cat([torch.ones(n, 1, device=dev), 1.0 - alpha + 1e-7], 1), 1)[:, :-1]
    w = alpha * trans
    acc = w.sum(1)
    rgb = (w[..., None] * colour).sum(1) + (1.0 - acc)[:, None] * background[None]
    depth = (w * mids).sum(1) / acc.clamp_min(1e-6)
    return {"rgb": rgb, "depth": torch.where(acc > 0.5, depth, torch.zeros_like(depth)), "hit": acc > 0.5,
            "points": x, "normals": g, "f_min": None, "opacity": acc}
