"""``geoimplicit train CONFIG.yaml``: train an occupancy-field DSM model."""

from __future__ import annotations

import click

from cli.options import device_option


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder for checkpoints, the resolved config and metrics. Default: runs/<config name>.")
@device_option
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from a checkpoint (the run folder's last.pt).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override train.steps.")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0), default=None,
              help="Override train.time_limit_s (seconds of training; 0 = no limit).")
@click.option("--seed", type=int, default=None, help="Override train.seed (model init and patch sampling).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Override data.workers.")
@click.option("--init-weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start from these weights (fine-tuning, e.g. geoimplicit/weights/occupancy_default.pt).")
@click.option("--export", type=click.Path(dir_okay=False), default=None,
              help="Also copy the final weights here (e.g. geoimplicit/weights/occupancy_default.pt).")
@click.option("--overwrite", is_flag=True, help="Reuse a run folder that already holds a model.pt.")
@click.pass_context
def train(ctx, config, run_dir, device, resume, steps, time_limit_s, seed, workers, init_weights, export,
          overwrite):
    """Train the occupancy network as CONFIG.yaml says (YAML with inherit_from; see docs/occupancy.md).

    Writes RUN_DIR/config.yaml (resolved), last.pt (resumable), model.pt (final weights) and metrics.jsonl.
    """
    import shutil
    from pathlib import Path

    from geoimplicit.dsm.occupancy.config import load_config
    from geoimplicit.dsm.occupancy.train import train as run_train
    from geoimplicit.errors import OutputExistsError

    cfg = load_config(config)
    if steps is not None:
        cfg.train.steps = steps
    if time_limit_s is not None:
        cfg.train.time_limit_s = time_limit_s
    if seed is not None:
        cfg.train.seed = seed
    if workers is not None:
        cfg.data.workers = workers
    run_dir = Path(run_dir or Path("runs") / Path(config).stem)
    if (run_dir / "model.pt").exists() and not (overwrite or resume):
        raise OutputExistsError("run folder already holds a model.pt", path=run_dir,
                                hint="pass --overwrite, --resume RUN/last.pt, or another -o")
    summary = run_train(cfg, run_dir, device=device, resume=resume, progress=ctx.obj["progress"],
                        init_weights=init_weights)
    exported = None
    if export:
        Path(export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary["model"], export)
        exported = export
    m = summary["metrics"]
    ctx.obj["progress"].result(
        model=summary["model"], run_dir=summary["run_dir"], exported=exported,
        steps=summary["steps"], final_loss=f"{summary['final_loss']:.4f}",
        val_median_abs_error=f"{m.get('occ_median_abs_error', float('nan')):.3f}",
        val_raster_median_abs_error=f"{m.get('raster_median_abs_error', float('nan')):.3f}",
    )
