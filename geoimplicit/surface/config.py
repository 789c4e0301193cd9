"""Settings of a neural-surface fit (saved resolved as ``MODEL_DIR/config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from geoimplicit.errors import ConfigError
from geoimplicit.geometry.pose import CameraOptimizerConfig

__all__ = ["SurfaceConfig", "RENDERERS", "ENCODINGS", "INITS"]

RENDERERS = ("idr", "volume")
ENCODINGS = ("frequency", "grid")
INITS = ("plane", "sphere")


@dataclass
class SurfaceConfig:
    """One surface fit: SDF and appearance networks, renderer, losses, Iso-Points, camera refinement."""

    renderer: str = "volume"
    """``volume``: an SDF volume renderer (NeuS's unbiased weights) along the rays inside the box, samples
    concentrated around the sphere-traced surface; ``idr``: sphere tracing to the zero level set with IDR's
    differentiable intersection. Volume is the default: on validation scenes (seeds 3 and 7, CPU, 300 steps)
    it gave 20.4 vs 18.3 dB held out and a DSM median error of 2.6 vs 3.5 m, and with points it was the one
    whose DSM the points improved (``docs/surface.md``)."""
    encoding: str = "grid"
    """Input encoding of the SDF network: ``frequency`` (NeRF/IDR positional encoding) or ``grid`` (a
    multiresolution dense/hash grid in plain PyTorch, fast to converge)."""
    init: str = "plane"
    """Geometric initialisation: ``plane`` (zero level set = the horizontal plane at the box's mean height,
    ground below, sky above: aerial tiles) or ``sphere`` (IDR/SAL: a sphere in the box)."""
    init_height: str = "sweep"
    """``plane`` init: its height: ``sweep`` (the median over the box of the heights where the train views agree
    best, a plane sweep) or ``box`` (the middle of the box's height range)."""
    view_dependent: bool = False
    """Feed the view direction to the appearance network (IDR does). Off by default: aerial scenes are close to
    Lambertian, and a view-dependent colour lets wrong geometry explain disagreeing views."""
    hidden: int = 64
    """Width of the SDF and appearance networks."""
    sdf_layers: int = 3
    """Hidden layers of the SDF network."""
    colour_layers: int = 2
    """Hidden layers of the appearance network."""
    feature_size: int = 32
    """Feature vector passed from the SDF network to the appearance network (IDR)."""
    frequencies: int = 6
    """``frequency`` encoding: octaves (lowest period = the box's horizontal extent)."""
    grid_levels: int = 8
    """``grid`` encoding: resolution levels."""
    grid_features: int = 2
    """``grid`` encoding: features per level."""
    grid_base_m: float = 16.0
    """``grid`` encoding: cell size of the coarsest level (CRS units)."""
    grid_finest_m: float = 0.5
    """``grid`` encoding: cell size of the finest level (CRS units)."""
    grid_hash_size: int = 2**17
    """``grid`` encoding: entries per level beyond which a level is hashed."""
    steps: int = 2000
    """Optimisation steps."""
    rays_per_step: int = 2048
    """Rays per step (spread over ``views_per_step`` train views)."""
    views_per_step: int = 4
    lr: float = 5e-3
    """Adam learning rate of the networks (cosine decay to 10 %)."""
    image_scale: float = 1.0
    """Fit on images resized by this factor (cameras scaled alike)."""
    rgb_weight: float = 1.0
    """L1 photometric loss."""
    eikonal_weight: float = 0.1
    """Eikonal loss ``(|grad f| - 1)^2`` on samples in the box and near the surface."""
    eikonal_samples: int = 2048
    hit_weight: float = 0.1
    """Rays that cross the whole height range inside the box must meet the surface: IDR's mask loss with every
    such ray inside the (absent) mask, on the lowest SDF along the ray."""
    hit_sharpness: float = 50.0
    """``alpha`` of IDR's mask loss (``sigmoid(-alpha * f_min)``), per CRS unit of SDF."""
    box_weight: float = 0.1
    """Ground below, sky above: ``f < 0`` on the box's bottom face and ``f > 0`` on its top face."""
    points_weight: float = 1.0
    """``--points``: ``|f|`` at the LiDAR / photogrammetric points (SDF = 0)."""
    points_sign_weight: float = 1.0
    """``--points``: the points were seen from above: ``f >= d / 2`` at ``d`` above them and ``f <= -d / 4`` at
    ``d / 2`` below (``d`` up to ``points_sign_m``), so they fix the field's sign, not only its zero set."""
    points_sign_m: float = 2.0
    normals_weight: float = 0.1
    """``--points`` with normals: ``1 - cos`` between the SDF gradient and the points' normals."""
    points_per_step: int = 2048
    trace_steps: int = 48
    """Sphere-tracing steps before the sampling fallback."""
    trace_samples: int = 64
    """Samples along a ray for the fallback search of the first sign change (and the volume renderer)."""
    surface_samples: int = 16
    """Volume renderer: extra samples around the sphere-traced surface."""
    inv_s_init: float = 1.0
    """Volume renderer: initial width of the logistic density (CRS units; learned)."""
    iso_points: bool = True
    """Keep Iso-Points on the zero level set and sample the eikonal loss near them."""
    iso_count: int = 4096
    """Iso-Points kept."""
    iso_every: int = 100
    """Steps between Iso-Points updates (projection, resampling, upsampling)."""
    iso_start: int = 100
    """First step with Iso-Points."""
    iso_sigma_m: float = 0.5
    """Eikonal samples at Iso-Points + normal noise of this standard deviation (CRS units)."""
    iso_share: float = 0.5
    """Share of the eikonal samples taken near Iso-Points."""
    iso_sdf_weight: float = 0.0
    """``|f|`` at the Iso-Points between updates (0: they guide sampling only)."""
    iso_upsample: float = 0.25
    """Share of the Iso-Points replaced at each update by new points beside those of highest rendering loss."""
    refine_cameras: bool = False
    """Learn a pose correction per train view (``pose``) jointly with the surface."""
    pose: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="SO3xR3", lr=0.01,
                                                                                     gauge="mean", rot_weight=0.01))
    """Pose corrections (learning rate in pixels per step; gauge ``mean``: the corrections' common similarity
    is removed after every step; with ``--points`` the points hold the scene, ``none`` is then fine).
    ``rot_weight`` 0.01, as in the MPI fit: without it the rotations drifted (validation seeds 3 and 7, CPU
    small preset, 0.1 deg / 1 m, 600 steps: aligned reprojection error after refinement 0.63 / 0.60 px with it,
    0.81 / 0.71 px without; rotations 0.18 / 0.15 deg against 0.96 / 0.84 deg; ``bench/RESULTS.md``)."""
    encoding_anneal: float = 0.0
    """Share of the fit over which the SDF encoding's bands (octaves or grid levels) open, coarse to fine, as in
    BARF (low frequencies first, so that camera corrections meet a smooth field); 0: all open from the start."""
    pose_warmup: int = 200
    """Steps before the pose corrections start to learn (the surface first takes a rough shape)."""
    margin_m: float = 0.0
    """Box margin around the AOI / nadir footprint (CRS units)."""
    height_margin_m: float = 2.0
    """Box margin above and below the scene's height range (CRS units)."""
    device: str = "auto"
    seed: int = 0
    checkpoint_seconds: float = 120.0
    """Seconds of fitting between checkpoints (0: none)."""
    checkpoint_every: int = 0
    """Steps between checkpoints (overrides ``checkpoint_seconds`` when > 0)."""
    progress_every: int = 10
    time_budget_s: float = 0.0
    """Stop after this many seconds of fitting (0: run all ``steps``); the learning rates then decay over the
    budget (whichever of steps and time runs out first). The bench uses it for equal-time runs."""

    @classmethod
    def from_dict(cls, d: dict) -> "SurfaceConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown surface settings: {', '.join(bad)}", hint=f"known: {', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("pose"), dict):
            pose_known = {f.name for f in fields(CameraOptimizerConfig)}
            bad = sorted(set(d["pose"]) - pose_known)
            if bad:
                raise ConfigError(f"unknown pose settings: {', '.join(bad)}",
                                  hint=f"known: {', '.join(sorted(pose_known))}")
            d["pose"] = CameraOptimizerConfig(**d["pose"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        for name, value, allowed in (("renderer", self.renderer, RENDERERS), ("encoding", self.encoding, ENCODINGS),
                                     ("init", self.init, INITS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.init_height not in ("sweep", "box"):
            raise ConfigError(f"init_height must be 'sweep' or 'box', not {self.init_height!r}")
        if self.steps < 0 or self.rays_per_step < 1 or self.views_per_step < 1:
            raise ConfigError("steps must be >= 0 and rays_per_step, views_per_step >= 1")
        if not self.grid_base_m >= self.grid_finest_m > 0:
            raise ConfigError("need grid_base_m >= grid_finest_m > 0")
        if self.image_scale <= 0 or self.lr <= 0:
            raise ConfigError("image_scale and lr must be > 0")
        if not 0 <= self.iso_share <= 1 or not 0 <= self.iso_upsample < 1:
            raise ConfigError("iso_share must be in [0, 1] and iso_upsample in [0, 1)")
        self.pose.validate()
        if not 0.0 <= self.encoding_anneal <= 1.0:
            raise ConfigError("encoding_anneal must be in [0, 1] (a share of the fit)")
        if self.refine_cameras and self.pose.mode == "off":
            raise ConfigError("refine_cameras needs a pose mode (SO3xR3 or SE3), not 'off'")
