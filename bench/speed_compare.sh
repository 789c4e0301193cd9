#!/usr/bin/env bash
# bench.speed for an older commit and for this tree in one device call (ratios within one lease).
# Here, first:   bench/speed_compare.sh --prepare REV   (the package files that differ from REV into .whl/old/)
# On the device: bash bench/speed_compare.sh            (carry .whl; results under $OUT/old and $OUT/new)
set -euo pipefail
if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .whl/old && mkdir -p .whl/old
    for f in $(git diff --name-only "$2" -- geoimplicit); do
        mkdir -p ".whl/old/$(dirname "$f")"
        git show "$2:$f" > ".whl/old/$f" 2>/dev/null || rm -f ".whl/old/$f"  # added since REV: left out
    done
    exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OLD_METHODS=${OLD_METHODS:-occupancy,raster} NEW_METHODS=${NEW_METHODS:-occupancy,raster,occupancy@3}  # and OLD_BUDGET, NEW_BUDGET (s)
rm -rf /tmp/oldpkg && mkdir -p /tmp/oldpkg && cp -r geoimplicit bench /tmp/oldpkg/ && cp -r .whl/old/geoimplicit /tmp/oldpkg/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
# the old package is imported from its own folder (the working directory comes first on sys.path)
OLD_BUDGET=${OLD_BUDGET:-165} NEW_BUDGET=${NEW_BUDGET:-235}
(cd /tmp/oldpkg && timeout $((OLD_BUDGET + 25)) python3 -m bench.speed --device cuda --out "$OUT/old" --work /tmp/w1 --budget-s $OLD_BUDGET \
    --methods "$OLD_METHODS" --stacks > "$OUT/old.log" 2>&1) || true
grep "^|" "$OUT/old/speed_bench.md" || true
timeout $((NEW_BUDGET + 25)) python3 -m bench.speed --device cuda --out "$OUT/new" --work /tmp/w1 --budget-s $NEW_BUDGET \
    --methods "$NEW_METHODS" --stacks > "$OUT/new.log" 2>&1 || true
grep "^|\|LAZ" "$OUT/new/speed_bench.md" || true
