#!/usr/bin/env bash
# The comparison as three processes (the stages are independent where it allows; a single
# `lapa experiment run --out $OUT` runs the same stages one after the other).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export MUJOCO_GL=egl OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-runs/experiment_reach}
mkdir -p "$OUT"
start=$(date +%s)
lapa experiment run --out "$OUT" --stage record
lapa experiment run --out "$OUT" --stage laq label pretrain > "$OUT.laq_lapa.log" 2>&1 &
p1=$!
lapa experiment run --out "$OUT" --stage action-pretrain vpt > "$OUT.baselines.log" 2>&1 &
p2=$!
wait $p1 $p2
lapa experiment run --out "$OUT"
echo "wall clock: $(( $(date +%s) - start )) s"
