"""The occupancy-field DSM's configs: dataclasses with their defaults, checks, and the YAML loader's entry.

Loaded through :mod:`geoimplicit.config` (YAML, ``inherit_from``, unknown keys rejected).

>>> cfg = load_config(packaged_config("default.yaml"))  # doctest: +SKIP
>>> cfg.model.variant
'stereo'
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from geoimplicit.config import CONFIG_DIR, build_dataclass, load_yaml_tree, packaged_config, save_yaml
from geoimplicit.errors import ConfigError

__all__ = ["Config", "ModelConfig", "DataConfig", "TrainConfig", "ExtractConfig", "InferConfig", "load_config",
           "save_config", "config_from_dict", "packaged_config", "CONFIG_DIR", "VARIANT_IMAGES", "TRUTHS"]

VARIANT_IMAGES = {"points": 0, "mono": 1, "stereo": 2}
SECOND_IMAGES = ("sun", "irc")  # kinds of second ortho in stereo training (data.second_images)
TRUTHS = ("surface", "lidar_tin", "lidar_tin_trees")  # data.truth: docs/occupancy.md
REAL_DEGRADATIONS = ("simple", "photogrammetric", "sparse_lidar")  # data.real_degradations


@dataclass
class ModelConfig:
    variant: str = "stereo"
    """Inputs of the model: ``points`` (point cloud only), ``mono`` (+ one ortho), ``stereo`` (+ two orthos)."""
    feature_cell_m: float = 0.5
    """Size in metres of a cell of the ground-plane feature grid the points are pooled onto."""
    height_scale_m: float = 16.0
    """Heights (metres above the patch's reference height) are divided by this before entering the network."""
    point_features: int = 32
    """Width of the local PointNet's per-point features (pooled by max and mean onto the grid)."""
    image_features: int = 16
    """Channels the image encoder produces per ortho image."""
    unet_channels: list = field(default_factory=lambda: [32, 64, 96])
    """Channels of the 2D U-Net levels (one entry per level; each level halves the grid)."""
    features: int = 32
    """Channels of the feature plane the decoder samples."""
    decoder_hidden: int = 32
    """Width of the residual MLP decoder."""
    decoder_blocks: int = 4
    """Number of residual blocks of the decoder."""
    use_prior: bool = True
    """Feed the raster DSM prior (cell max of the points, holes filled) to the encoder and the decoder."""
    image_dropout: float = 0.0
    """Training only: probability that an ortho image is withheld (so that the model also runs without it)."""
    true_ortho_input: bool = False
    """Tell the image encoder, per ortho, whether it is a true ortho (every roof on its footprint). A user knows
    this of the product (most orthos lean), and only in a true ortho are the image's edges where the walls are.
    Inference takes it as ``true_ortho`` (``geoimplicit dsm --true-ortho``)."""


@dataclass
class DataConfig:
    synthetic_train_seeds: list = field(default_factory=lambda: [0, 48])
    """Generator seeds for training, as ``[first, stop)``."""
    synthetic_val_seeds: list = field(default_factory=lambda: [1000, 1004])
    """Generator seeds for validation (never trained on), as ``[first, stop)``."""
    synthetic_size_m: float = 128.0
    """Side of each generated city in metres."""
    synthetic_crs: str = "EPSG:2154"
    """CRS of the generated cities."""
    real: list = field(default_factory=list)
    """Real dense LiDAR files (paths relative to the config file) turned into (truth, degraded input) pairs."""
    truth: str = "surface"
    """Truth DSM to learn: ``surface`` (generated: the scene's own DSM; real: the dense cloud's cell max) or
    ``lidar_tin`` (the TIN DSM of a dense survey, as IGN makes its LiDAR HD DSMs) or ``lidar_tin_trees``
    (generated scenes: that TIN in tree cells only; docs/occupancy.md)."""
    truth_density_m2: float = 25.0
    """``lidar_tin`` on generated scenes: points per square metre of the simulated dense survey."""
    second_images: list = field(default_factory=lambda: ["sun"])
    """Stereo: kinds of second ortho a generated training patch gets, one drawn per patch: ``sun`` (the RGB
    ortho under another sun) and ``irc`` (a false-colour infrared ortho: near infrared, red, green)."""
    image_lean: list = field(default_factory=lambda: [0.0, 0.0])
    """Range of the relief displacement of generated orthos (horizontal shift per unit of height above the
    ground, random direction): above 0, half the training patches see orthos that are not true orthos."""
    real_weight: float = 0.25
    """Fraction of training patches drawn from the real files (when there are any)."""
    patch_size_m: float = 32.0
    """Side in metres of a training patch."""
    queries_per_patch: int = 4096
    """Query points sampled per training patch."""
    near_surface_fraction: float = 0.7
    """Fraction of queries drawn near the truth surface (the rest uniformly through the column)."""
    near_surface_sigma_m: float = 1.0
    """Standard deviation in metres of the near-surface queries around the truth surface."""
    neighbour_fraction: float = 0.0
    """Share of the near-surface queries drawn around the truth surface of another column up to
    ``neighbour_radius_m`` away (the label still that of the query's own column): beside walls these are queries at
    roof height over the ground and at ground height under the roof edge, where a surface that bleeds past its
    walls goes wrong."""
    neighbour_radius_m: float = 1.0
    """Largest horizontal offset in metres of the column whose surface a neighbour query is drawn near."""
    column_margin_m: float = 5.0
    """Queries and the surface search extend this far below the lowest and above the highest input point."""
    keep_fraction: list = field(default_factory=lambda: [0.2, 0.8])
    """Range of the fraction of points kept when degrading an input cloud."""
    noise_m: list = field(default_factory=lambda: [0.05, 0.5])
    """Range of the Gaussian height noise (metres) added to the input points."""
    hole_fraction: list = field(default_factory=lambda: [0.0, 0.15])
    """Range of the fraction of the area cut out of the input as holes."""
    outlier_fraction: list = field(default_factory=lambda: [0.0, 0.01])
    """Range of the fraction of gross outliers added to the input."""
    real_degradations: list = field(default_factory=lambda: ["simple"])
    """How a real training patch's input is made from its dense cloud, one kind drawn per patch: ``simple``
    (thin, noise, round holes, outliers), ``photogrammetric`` (top surface only, edge noise and smear, shadow and
    facade holes: :func:`geoimplicit.synthetic.points.photogrammetric_points`), ``sparse_lidar`` (every return,
    thinned to ``sparse_density_m2``). A kind listed twice is drawn twice as often."""
    photo_density_m2: list = field(default_factory=lambda: [2.0, 10.0])
    """Range of the points per square metre of a ``photogrammetric`` input."""
    photo_noise_m: list = field(default_factory=lambda: [0.03, 0.2])
    """Range of the flat-surface height noise (metres) of a ``photogrammetric`` input (it grows at edges)."""
    sparse_density_m2: list = field(default_factory=lambda: [0.5, 4.0])
    """Range of the points per square metre of a ``sparse_lidar`` input."""
    wall_weight: float = 1.0
    """Loss weight of the queries in columns beside a truth height step of more than ``wall_step_m`` (1: none)."""
    wall_step_m: float = 1.0
    """Height difference (metres) between a column and one 0.5 m away that marks it as beside a wall."""
    workers: int = 0
    """Data-loader worker processes (0: in the training process)."""


@dataclass
class TrainConfig:
    steps: int = 2000
    """Optimiser steps."""
    time_limit_s: float = 0.0
    """Stop after this many seconds of training (0: no limit); the final checkpoint is still written."""
    batch_size: int = 16
    """Patches per step."""
    lr: float = 2e-3
    """Peak learning rate of AdamW (cosine decay to 5 % of it)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    amp: bool = True
    """Mixed precision (bfloat16) on CUDA; ignored on the CPU."""
    val_every: int = 500
    """Validate every this many steps (and at the end)."""
    checkpoint_every: int = 500
    """Write ``last.pt`` every this many steps."""
    seed: int = 0
    """Seed of the model initialisation and the patch sampler."""


@dataclass
class ExtractConfig:
    coarse_steps: int = 32
    """Heights evaluated per column in the coarse pass of the surface search."""
    refine_steps: int = 10
    """Bisection steps between the highest occupied coarse height and the one above it."""
    batch_columns: int = 262144
    """Columns decoded at once (times coarse_steps queries); lower it if the GPU runs out of memory."""
    fill: str = "nodata"
    """Columns with no occupied height and no input support nearby: ``nodata`` or ``prior`` (the filled raster)."""
    max_hole_m: float = 8.0
    """Output columns farther than this (metres) from any input point are nodata unless ``fill: prior``."""
    readout: str = "surface"
    """Height read from each column's field: ``surface`` (the highest 0.5 crossing) or ``expected`` (the expected
    height under the occupancy probability: the mean of roof and ground where the field cannot tell; extract.py)."""
    readout_subcells: int = 1
    """Sample the field at an n x n lattice inside each output cell (1: the centre only) and reduce per cell."""
    readout_reduce: str = "mean"
    """How sub-cell heights make the cell's: ``mean`` (area-weighted: a wall cell gets the mix), ``max`` or ``min``
    (the lower side of a wall: against a field that bleeds roofs past their walls)."""
    refiner: str = "auto"
    """Height refiner (refine.py) applied after the search: ``auto`` (the shipped one when these are the weights
    it was trained on), ``none``, or a path written by ``geoimplicit train-refiner``."""


@dataclass
class InferConfig:
    tile_size_m: float = 128.0
    """Core side of an inference tile in metres."""
    overlap_m: float = 16.0
    """Context added around each tile in metres (about the U-Net's receptive field)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training patches."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Surface search."""
    infer: InferConfig = field(default_factory=InferConfig)
    """Tiled inference."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(data: dict, source: str | os.PathLike | None = None) -> Config:
    """Validate a mapping into a :class:`Config` (unknown keys raise :class:`ConfigError`)."""
    cfg = build_dataclass(Config, data, "", Path(source) if source else None)
    _validate(cfg, source)
    return cfg


def _validate(cfg: Config, source) -> None:
    if cfg.model.variant not in VARIANT_IMAGES:
        close = difflib.get_close_matches(cfg.model.variant, list(VARIANT_IMAGES), n=1)
        raise ConfigError(
            f"model.variant must be one of points, mono, stereo, got {cfg.model.variant!r}", path=source,
            hint=f"did you mean {close[0]}?" if close else None,
        )
    if cfg.data.truth not in TRUTHS:
        raise ConfigError(f"data.truth must be one of {', '.join(TRUTHS)}, got {cfg.data.truth!r}", path=source)
    if cfg.extract.readout not in ("surface", "expected"):
        raise ConfigError(f"extract.readout must be surface or expected, got {cfg.extract.readout!r}", path=source)
    if cfg.extract.readout_reduce not in ("mean", "max", "min"):
        raise ConfigError(f"extract.readout_reduce must be mean, max or min, got {cfg.extract.readout_reduce!r}",
                          path=source)
    if not 1 <= cfg.extract.readout_subcells <= 8:
        raise ConfigError(f"extract.readout_subcells must be 1 to 8, got {cfg.extract.readout_subcells!r}", path=source)
    if cfg.extract.fill not in ("nodata", "prior"):
        raise ConfigError(f"extract.fill must be nodata or prior, got {cfg.extract.fill!r}", path=source)
    bad = [k for k in cfg.data.second_images if k not in SECOND_IMAGES]
    if bad or not cfg.data.second_images:
        raise ConfigError(f"data.second_images must be a non-empty list of {', '.join(SECOND_IMAGES)}, got "
                          f"{cfg.data.second_images!r}", path=source)
    lean = cfg.data.image_lean
    if len(lean) != 2 or not all(isinstance(x, (int, float)) and 0 <= x for x in lean) or lean[0] > lean[1]:
        raise ConfigError(f"data.image_lean must be a range [low, high] of non-negative numbers, got {lean!r}",
                          path=source)
    if not 0.0 <= cfg.data.neighbour_fraction <= 1.0:
        raise ConfigError(f"data.neighbour_fraction must be within [0, 1], got {cfg.data.neighbour_fraction!r}",
                          path=source)
    if not cfg.data.neighbour_radius_m > 0:
        raise ConfigError(f"data.neighbour_radius_m must be above 0 (metres), got {cfg.data.neighbour_radius_m!r}",
                          path=source)
    bad = [k for k in cfg.data.real_degradations if k not in REAL_DEGRADATIONS]
    if bad or not cfg.data.real_degradations:
        raise ConfigError(f"data.real_degradations must be a non-empty list of {', '.join(REAL_DEGRADATIONS)}, got "
                          f"{cfg.data.real_degradations!r}", path=source)
    for name in ("photo_density_m2", "photo_noise_m", "sparse_density_m2"):
        v = getattr(cfg.data, name)
        if len(v) != 2 or not all(isinstance(x, (int, float)) and x >= 0 for x in v) or v[0] > v[1]:
            raise ConfigError(f"data.{name} must be a range [low, high] of non-negative numbers, got {v!r}",
                              path=source)
    if not cfg.data.wall_weight > 0:
        raise ConfigError(f"data.wall_weight must be above 0, got {cfg.data.wall_weight!r}", path=source)
    for name in ("synthetic_train_seeds", "synthetic_val_seeds"):
        v = getattr(cfg.data, name)
        if len(v) != 2 or not all(isinstance(x, int) for x in v):
            raise ConfigError(f"data.{name} must be [first, stop) as two integers, got {v!r}", path=source)


def load_config(path: str | os.PathLike) -> Config:
    """Load a YAML config and its ``inherit_from`` chain into a validated :class:`Config`.

    Relative paths in ``data.real`` are resolved against the directory of the file that names them.
    """
    tree = load_yaml_tree(path)
    real = tree.get("data", {}).get("real") if isinstance(tree.get("data"), dict) else None
    if real:
        src = getattr(tree["data"], "sources", {}).get("real", Path(path).resolve())
        tree["data"]["real"] = [
            str(p) if os.path.isabs(os.path.expanduser(str(p))) else str((Path(src).parent / str(p)).resolve())
            for p in real
        ]
    return config_from_dict(tree, path)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config (no inheritance left) as YAML."""
    return save_yaml(cfg.to_dict(), path)
