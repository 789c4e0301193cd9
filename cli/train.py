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


@click.command("train-refiner")
@click.argument("config", type=click.Path(dir_okay=False, exists=True), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Refiner weights to write (e.g. geoimplicit/weights/occupancy_refiner_default.pt).")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Occupancy weights whose heights it corrects. Default: the shipped ones.")
@device_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs drawn and the init.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.pass_context
def train_refiner(ctx, config, output, weights, device, seed, epochs, overwrite):
    """Train the height refiner of an occupancy model (docs/occupancy.md, "Height refiner").

    CONFIG names the training data (data.real, data.real_degradations, data.synthetic_train_seeds); default:
    geoimplicit/configs/real-edges.yaml, whose real files bench/traindata.sh copies into .traindata/.
    """
    from pathlib import Path

    from geoimplicit.device import resolve_device
    from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS
    from geoimplicit.dsm.occupancy.refine_train import RefinerRecipe
    from geoimplicit.dsm.occupancy.refine_train import train_refiner as run
    from geoimplicit.errors import OutputExistsError

    config = Path(config) if config else Path(__file__).resolve().parents[1] / "geoimplicit/configs/real-edges.yaml"
    out = Path(output)
    if out.exists() and not overwrite:
        raise OutputExistsError("refiner weights already exist", path=out, hint="pass --overwrite or another -o")
    recipe = RefinerRecipe(seed=seed) if epochs is None else RefinerRecipe(seed=seed, epochs=epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run(Path(weights) if weights else DEFAULT_WEIGHTS, config, out, recipe=recipe,
                 device=str(resolve_device(device)), progress=ctx.obj["progress"])
    ctx.obj["progress"].result(refiner=out, examples=report["examples"],
                               held_out_rmse_before_m=f"{report['held_out_rmse_before_m']:.3f}",
                               held_out_rmse_after_m=f"{report['held_out_rmse_after_m']:.3f}")
