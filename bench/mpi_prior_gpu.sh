#!/usr/bin/env bash
# The MPI prior on one GPU, in two calls of under 590 s each, from the repository root, with $OUT set:
#   bash bench/mpi_prior_gpu.sh train          # warm-start training (TRAIN_S s), then validation: shipped vs new
#   bash bench/mpi_prior_gpu.sh bench PRIOR    # bench/mpi_prior.py at full size on the held-out scene (seed 1)
# train: OUT/run/ (last.pt: resumable; model.pt; metrics.jsonl), OUT/mpi_prior_new.pt, OUT/val/mpi_prior.jsonl
# (prior alone, 3 train views, on validation scenes 900000-1 only) and OUT/decision.json: the rule fixed before
# training is "ship the new weights if their mean held-out PSNR there beats the shipped weights'".
# bench: OUT/mpi_prior.jsonl (scratch, sweep alone, prior alone, prior + fit at 5-33 % of the steps, summary).
# Knobs (environment): TRAIN_S, WORKERS, CONFIG, INIT, VAL_ARGS, BENCH_ARGS, LIMIT_S (a call's wall limit).
set -u
MODE=${1:?train or bench}
PRIOR=${2:-default}
: "${OUT:?set OUT to the output folder}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD && export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LIMIT_S=${LIMIT_S:-575}
mkdir -p "$OUT"
left() { echo $(( LIMIT_S - SECONDS )); }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

if [ "$MODE" = train ]; then
  RUN=${RUN:-/tmp/mpi_prior_run}
  TRAIN_S=${TRAIN_S:-360}
  # training stops itself at TRAIN_S (scene waits included) and validates; the timeout is the backstop
  timeout -k 10 $(( TRAIN_S + 90 )) $PY -m cli nvs train-prior "${CONFIG:-mpi_prior_large.yaml}" -o "$RUN" \
      --time-limit "$TRAIN_S" --workers "${WORKERS:-12}" --init "${INIT:-default}" --device "${DEVICE:-cuda}" --overwrite \
      2>&1 | tail -n 40 | tee "$OUT/train.log"
  mkdir -p "$OUT/run"
  cp "$RUN"/{config.json,metrics.jsonl,model.pt,last.pt} "$OUT/run/" 2>/dev/null
  [ -f "$RUN/model.pt" ] || { echo "no model.pt: training did not finish"; exit 1; }
  cp "$RUN/model.pt" "$OUT/mpi_prior_new.pt"
  # validation scenes only (seeds 900000-1, a training CRS); the held-out bench scene is seed 1, EPSG:28992
  timeout -k 10 "$(left)" $PY -m bench.mpi_prior --prior "default,$RUN/model.pt" --methods prior --train-sets 3 \
      --seeds 900000,900001 --crs EPSG:2154 --fractions "" --device "${DEVICE:-auto}" --out /tmp/mpi_prior_val ${VAL_ARGS:-} \
      2>&1 | grep -v Warning | tail -n 20
  mkdir -p "$OUT/val" && cp /tmp/mpi_prior_val/mpi_prior.jsonl "$OUT/val/" 2>/dev/null
  $PY - "$OUT" "$RUN/model.pt" <<'PYEOF'
import json, sys
out, new = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{out}/val/mpi_prior.jsonl")]
psnr = {p: [r["test_psnr"] for r in rows if r.get("prior") == p and r["method"] == "prior alone"] for p in ("default", new)}
mean = {p: sum(v) / len(v) if v else None for p, v in psnr.items()}
ok = all(len(v) == 2 for v in psnr.values())
d = {"rule": "ship if mean held-out PSNR of the prior alone (3 views, validation seeds 900000-1) > the shipped",
     "shipped_psnr": mean["default"], "new_psnr": mean[new], "complete": ok,
     "ship": bool(ok and mean[new] > mean["default"])}
json.dump(d, open(f"{out}/decision.json", "w"), indent=1)
print(json.dumps(d))
PYEOF
elif [ "$MODE" = bench ]; then
  trap 'cp /tmp/mpi_prior_bench/mpi_prior.jsonl "$OUT/" 2>/dev/null' EXIT
  timeout -k 10 "$(left)" $PY -m bench.mpi_prior --prior "$PRIOR" --preset auto --device "${DEVICE:-cuda}" --train-sets 3,all \
      --fractions 0.05,0.1,0.2,0.333 --out /tmp/mpi_prior_bench ${BENCH_ARGS:-} 2>&1 | grep -v Warning
else
  echo "mode: train or bench"; exit 2
fi
echo "done in ${SECONDS} s"
