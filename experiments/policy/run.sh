#!/usr/bin/env bash
# The policy recipe study (issue "A policy that works"): data, every ablation row, evaluation.
# Every stage is resumable (re-run the script after an interruption); runs and data live outside
# git under $RUNS and $DATA. Wall times on the 2-core CPU are in README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/policy}
RUNS=${RUNS:-runs/policy}
EPISODES=${EPISODES:-50}
mkdir -p "$DATA" "$RUNS"

# -- data: the expert recorded to the end of its plan, 5 steps holding still, DART 5 mm, clean labels
opts="--until-done --settle-steps 5 --dart-noise 0.005 --expert-noise 0 --image-size 128"
i=0
for fam in reach push; do
  [ -f "$DATA/$fam/meta/info.json" ] || ./run lapa sim record --suite $fam --episodes 400 --seed $((i * 100000)) --out "$DATA/$fam" $opts
  i=$((i + 1))
done
TRAIN="$DATA/reach $DATA/push"
common="--num-bins 64 --chunk-size 4 --batch-size 64 --lr 3e-4 --augment shift --steps 3000 --ckpt-every 500 --threads 1"

# -- upper bound (action labels on all 800 episodes), from scratch
run() { local name=$1; shift; [ -f "$RUNS/$name/checkpoints/step_00003000/config.json" ] || \
  ./run lapa train finetune --data $TRAIN --out "$RUNS/$name" $common "$@" $( [ -d "$RUNS/$name/checkpoints" ] && echo --resume ); }
run A_film_state_l1 --init scratch --preset tabletop
run B_film_state_l1_goal --init scratch --preset tabletop --goal-aux

# -- LAPA: LAQ on the same episodes as action-free videos -> latent pretraining -> finetuning
[ -f "$RUNS/laq/checkpoints/step_00001000/config.json" ] || \
  ./run lapa laq train --data $TRAIN --preset tiny --out "$RUNS/laq" --steps 1000 --workers 1 --threads 1
[ -f "$RUNS/labels.parquet" ] || ./run lapa laq label --ckpt "$RUNS/laq" --data $TRAIN --out "$RUNS/labels.parquet"
[ -f "$RUNS/pretrain/checkpoints/step_00001500/config.json" ] || \
  ./run lapa train pretrain --labels "$RUNS/labels.parquet" --preset tabletop --num-bins 64 --chunk-size 4 \
    --batch-size 64 --lr 3e-4 --augment shift --steps 1500 --threads 1 --out "$RUNS/pretrain"
run L_lapa_goal --init "$RUNS/pretrain" --goal-aux

# -- closed loop: 50 episodes per family, seen and unseen instructions, the same seeds for every row
for name in A_film_state_l1 B_film_state_l1_goal L_lapa_goal; do
  for fam in reach push; do
    for cond in seen unseen; do
      out="$RUNS/eval/${name}_${fam}_${cond}.json"
      [ -f "$out" ] || ./run lapa eval --ckpt "$RUNS/$name" --suite $fam --episodes "$EPISODES" --json "$out" \
        $( [ $cond = unseen ] && echo --held-out )
    done
  done
done
./run lapa ablation --evals "$RUNS/eval" --out experiments/policy --descriptions experiments/policy/rows.json
