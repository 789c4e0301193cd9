"""Train several seeds of one or more occupancy configs at once on one GPU, export and tar their weights.

    python -m bench.train_seeds --config NAME=CONFIG [--config ...] [--seeds 0,1,2] [--train-seconds 300]
        [--workers 2] [--init-weights PATH] [--device cuda] [--deadline-seconds 470] --out OUT

Every (config, seed) is one ``geoimplicit train`` subprocess (``python -m cli.main train``) with its own seed,
``--time-limit`` (the learning-rate schedule follows the time) and ``--workers`` data processes, all started
together so that they share the GPU (the models are small; the data workers are the limit: 16 cores hold six
runs of two workers). A run still going at ``--deadline-seconds`` after the start is stopped and its last
checkpoint (``checkpoint_every`` steps) is exported instead, marked ``partial``.

OUT gets two files: ``train_seeds.tar`` (per run NAME_sSEED.pt, the weights without optimizer, plus
NAME_sSEED.metrics.jsonl, .config.yaml, .log: the last 200 lines) and ``train_seeds.json`` (per run: status,
steps, seconds, final validation metrics). The runs' folders stay in ``--runs`` (default /tmp/train_seeds_runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_configs(items: list[str]) -> dict:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name.replace("-", "").replace("_", "").isalnum() or not Path(path).exists():
            raise SystemExit(f"--config {it!r}: give NAME=PATH of an existing config (NAME: letters, digits, - _)")
        out[name] = path
    return out


def command(cfg: str, run: Path, seed: int, args) -> list[str]:
    cmd = [sys.executable, "-m", "cli.main", "--progress", "none", "train", cfg, "-o", str(run), "--device",
           args.device, "--seed", str(seed), "--workers", str(args.workers), "--time-limit", str(args.train_seconds),
           "--overwrite"]
    if args.init_weights:
        cmd += ["--init-weights", args.init_weights]
    return cmd


def launch(configs: dict, seeds: list[int], args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    procs = {}
    for name, cfg in configs.items():
        for seed in seeds:
            key = f"{name}_s{seed}"
            run = args.runs / key
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "log.txt", "w")
            procs[key] = {"proc": subprocess.Popen(command(cfg, run, seed, args), stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=REPO, env=env, start_new_session=True),
                          "log": log, "run": run, "config": name, "seed": seed, "t0": time.time()}
    return procs


def wait(procs: dict, deadline: float) -> None:
    """Wait for every run; stop those still going at ``deadline`` (their own process group: workers too)."""
    while any(p["proc"].poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(2)
    for key, p in procs.items():
        if p["proc"].poll() is None:
            print(f"{key}: past the deadline, stopping it", flush=True)
            os.killpg(p["proc"].pid, signal.SIGTERM)
            try:
                p["proc"].wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p["proc"].pid, signal.SIGKILL)
                p["proc"].wait()
        p["seconds"] = time.time() - p["t0"]
        p["log"].close()


def export(key: str, p: dict, stage: Path) -> dict:
    """Copy a run's weights (model.pt, else last.pt without its optimizer) and logs into ``stage``."""
    import torch

    run = p["run"]
    info = {"config": p["config"], "seed": p["seed"], "returncode": p["proc"].returncode,
            "seconds": round(p["seconds"], 1)}
    src = run / "model.pt" if (run / "model.pt").exists() else run / "last.pt"
    info["status"] = "complete" if src.name == "model.pt" and p["proc"].returncode == 0 else "partial"
    if src.exists():
        ck = torch.load(src, map_location="cpu", weights_only=True)
        ck.pop("optimizer", None)
        torch.save(ck, stage / f"{key}.pt")
        info.update(steps=int(ck.get("step", 0)), metrics=ck.get("metrics", {}))
    else:
        info["status"] = "failed"
    for name, suffix in (("metrics.jsonl", "metrics.jsonl"), ("config.yaml", "config.yaml")):
        if (run / name).exists():
            (stage / f"{key}.{suffix}").write_bytes((run / name).read_bytes())
    lines = (run / "log.txt").read_text(errors="replace").splitlines()[-200:]
    (stage / f"{key}.log").write_text("\n".join(lines) + "\n")
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True, help="NAME=CONFIG.yaml (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-seconds", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=2, help="data processes per run")
    ap.add_argument("--init-weights", default=None, help="start every run from these weights (fine-tuning)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline-seconds", type=float, default=470.0, help="stop runs still going after this")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/train_seeds_runs"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    configs = parse_configs(args.config)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.init_weights and not Path(args.init_weights).exists():
        raise SystemExit(f"--init-weights {args.init_weights}: file not found")
    args.runs = args.runs.resolve()
    procs = launch(configs, seeds, args)
    print(f"started {len(procs)} runs: {', '.join(procs)}", flush=True)
    wait(procs, t0 + args.deadline_seconds)
    stage = args.runs / "_stage"
    stage.mkdir(parents=True, exist_ok=True)
    summary = {"configs": configs, "seeds": seeds, "train_seconds": args.train_seconds, "workers": args.workers,
               "init_weights": args.init_weights, "runs": {k: export(k, p, stage) for k, p in procs.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".train_seeds.tar.partial"
    with tarfile.open(tmp, "w") as tar:
        for f in sorted(stage.iterdir()):
            tar.add(f, arcname=f"train_seeds/{f.name}")
    os.replace(tmp, args.out / "train_seeds.tar")
    summary["tar_bytes"] = (args.out / "train_seeds.tar").stat().st_size
    summary["wall_seconds"] = round(time.time() - t0, 1)
    (args.out / "train_seeds.json").write_text(json.dumps(summary, indent=1))
    for k, r in summary["runs"].items():
        print(f"{k}: {r['status']} steps={r.get('steps')} {r['seconds']} s rc={r['returncode']}", flush=True)
    print(f"tar {summary['tar_bytes'] / 1e6:.1f} MB, {summary['wall_seconds']} s", flush=True)
    return summary


if __name__ == "__main__":
    main()
