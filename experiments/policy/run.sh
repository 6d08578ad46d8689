#!/usr/bin/env bash
# The policy recipe study (experiments/policy/README.md): data, the ablation rows, evaluation.
# Every stage is resumable: run the script again after an interruption. Runs and data live outside
# git under $RUNS and $DATA. Wall time on the 2-core CPU is about 2.5 hours (README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/policy}
RUNS=${RUNS:-runs/policy}
EPISODES=${EPISODES:-50}
mkdir -p "$DATA" "$RUNS/eval"
lapa() { ./run lapa "$@"; }
done_at() { [ -f "$1/checkpoints/step_$(printf %08d "$2")/config.json" ]; }
resume() { [ -d "$1/checkpoints" ] && echo --resume || true; }

# -- data: the expert recorded to the end of its plan plus 5 steps holding still, DART 5 mm with
#    clean labels, and a random gripper start (up to 10 cm) so that the arm's position alone does
#    not tell where it is going
opts="--until-done --settle-steps 5 --dart-noise 0.005 --expert-noise 0 --image-size 128 --start-jitter 0.1"
seed=0
for fam in reach push pick put; do
  [ -f "$DATA/$fam/meta/info.json" ] || lapa sim record --suite $fam --episodes 400 --seed $seed --out "$DATA/$fam" $opts
  seed=$((seed + 100000))
done
# the same recordings with the pass-through expert (no stop at via points), same seeds
seed=0
for fam in reach push; do
  [ -f "$DATA/${fam}_pt/meta/info.json" ] || lapa sim record --suite $fam --episodes 400 --seed $seed \
    --out "$DATA/${fam}_pt" $opts --pass-through
  seed=$((seed + 100000))
done
RP="$DATA/reach $DATA/push"
RP_PT="$DATA/reach_pt $DATA/push_pt"
common="--num-bins 64 --chunk-size 4 --batch-size 64 --lr 3e-4 --augment shift --ckpt-every 500 --threads 1"

# -- D: the tabletop recipe from scratch on all 800 labelled episodes
done_at "$RUNS/D_scratch" 3000 || lapa train finetune --init scratch --preset tabletop --data $RP \
  --out "$RUNS/D_scratch" --steps 3000 $common $(resume "$RUNS/D_scratch")

# -- LAPA: LAQ on the same episodes as action-free videos -> labels -> latent pretraining
done_at "$RUNS/laq" 1000 || lapa laq train --data $RP --preset tiny --out "$RUNS/laq" --steps 1000 --workers 1 \
  --threads 1 $(resume "$RUNS/laq")
[ -f "$RUNS/labels.parquet" ] || lapa laq label --ckpt "$RUNS/laq" --data $RP --out "$RUNS/labels.parquet"
done_at "$RUNS/pretrain" 1500 || lapa train pretrain --labels "$RUNS/labels.parquet" --preset tabletop \
  --out "$RUNS/pretrain" --steps 1500 $common $(resume "$RUNS/pretrain")

# -- L: the same finetuning as D from the latent-pretrained trunk; P: + instruction augmentation
done_at "$RUNS/L_lapa" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --data $RP \
  --out "$RUNS/L_lapa" --steps 3000 $common $(resume "$RUNS/L_lapa")
done_at "$RUNS/P_lapa_para" 2500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase --data $RP \
  --out "$RUNS/P_lapa_para" --steps 2500 $common $(resume "$RUNS/P_lapa_para")

done_at "$RUNS/Q_lapa_para_4500" 2000 || lapa train finetune --init "$RUNS/P_lapa_para" --paraphrase --data $RP \
  --out "$RUNS/Q_lapa_para_4500" --steps 2000 $common $(resume "$RUNS/Q_lapa_para_4500")

# -- reliability: the L step with finetuning seeds 1 and 2
for seed in 1 2; do
  done_at "$RUNS/L_seed$seed" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --data $RP --seed $seed \
    --out "$RUNS/L_seed$seed" --steps 3000 $common $(resume "$RUNS/L_seed$seed")
done

# -- F: the latent-pretrained trunk finetuned on all four families
done_at "$RUNS/F_lapa_all4" 4000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --paraphrase \
  --data $RP "$DATA/pick" "$DATA/put" --out "$RUNS/F_lapa_all4" --steps 4000 $common $(resume "$RUNS/F_lapa_all4")

# -- G, H: the latent-pretrained trunk finetuned on one family each (pick, put), 3000 steps
done_at "$RUNS/G_pick" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --paraphrase \
  --data "$DATA/pick" --out "$RUNS/G_pick" --steps 3000 $common $(resume "$RUNS/G_pick")
done_at "$RUNS/H_put" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --paraphrase \
  --data "$DATA/put" --out "$RUNS/H_put" --steps 3000 $common $(resume "$RUNS/H_put")

# -- R: P with the broad instruction augmentation instead of the templates
done_at "$RUNS/R_lapa_broad" 2500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad --data $RP \
  --out "$RUNS/R_lapa_broad" --steps 2500 $common $(resume "$RUNS/R_lapa_broad")

# -- S1: L on the pass-through recordings; S2: S1 + the broad augmentation (R's step)
done_at "$RUNS/S1_lapa_pt" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --data $RP_PT \
  --out "$RUNS/S1_lapa_pt" --steps 3000 $common $(resume "$RUNS/S1_lapa_pt")
done_at "$RUNS/S2_lapa_pt_broad" 2500 || lapa train finetune --init "$RUNS/S1_lapa_pt" --paraphrase broad \
  --data $RP_PT --out "$RUNS/S2_lapa_pt_broad" --steps 2500 $common $(resume "$RUNS/S2_lapa_pt_broad")

# -- T: R with a state history (the end effector 3, 6 and 12 ticks ago); T_seed1: the same, seed 1
done_at "$RUNS/T_lapa_broad_hist" 2500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad --data $RP \
  --state-history 3,6,12 --out "$RUNS/T_lapa_broad_hist" --steps 2500 $common $(resume "$RUNS/T_lapa_broad_hist")
done_at "$RUNS/T_seed1" 2500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad --data $RP \
  --state-history 3,6,12 --seed 1 --out "$RUNS/T_seed1" --steps 2500 $common $(resume "$RUNS/T_seed1")

# -- fourth round: the hand camera. The same recordings with observation.images.wrist (same seeds);
#    V: T's recipe on pick alone; W: V + the wrist camera; W2: W with the cosine decay, 1500 steps.
#    (V and W ran with a constant learning rate, so their checkpoints at 500 / 1000 steps are those of
#    --steps 500 / 1000.)
seed=0
for fam in reach push pick; do
  [ -f "$DATA/${fam}_wrist/meta/info.json" ] || lapa sim record --suite $fam --episodes 400 --seed $seed \
    --out "$DATA/${fam}_wrist" $opts --wrist-camera
  seed=$((seed + 100000))
done
done_at "$RUNS/V_pick_hist" 500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad --data "$DATA/pick" \
  --state-history 3,6,12 --out "$RUNS/V_pick_hist" --steps 500 $common $(resume "$RUNS/V_pick_hist")
done_at "$RUNS/W_pick_hist_wrist" 1000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/pick_wrist" --state-history 3,6,12 --wrist-camera --out "$RUNS/W_pick_hist_wrist" --steps 1000 \
  $common $(resume "$RUNS/W_pick_hist_wrist")
done_at "$RUNS/W2_pick_wrist_cosine" 1500 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/pick_wrist" --state-history 3,6,12 --wrist-camera --lr-schedule cosine \
  --out "$RUNS/W2_pick_wrist_cosine" --steps 1500 $common $(resume "$RUNS/W2_pick_wrist_cosine")

# -- fifth round: the DART noise faded near the expert's waypoints (--dart-fade 0.03), pick and put
#    recorded again with the same seeds. Y: W's recipe on the new pick data; Z: the same on put.
seed=200000
for fam in pick put; do
  [ -f "$DATA/${fam}_wrist_fade/meta/info.json" ] || lapa sim record --suite $fam --episodes 400 --seed $seed \
    --out "$DATA/${fam}_wrist_fade" $opts --wrist-camera --dart-fade 0.03
  seed=$((seed + 100000))
done
for fam in pick put; do
  row=$( [ $fam = pick ] && echo Y_pick_wrist_fade || echo Z_put_wrist_fade )
  done_at "$RUNS/$row" 1000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
    --data "$DATA/${fam}_wrist_fade" --state-history 3,6,12 --wrist-camera --out "$RUNS/$row" --steps 1000 \
    $common $(resume "$RUNS/$row")
done
# V2: Y without the hand camera; Z2: Z without it, 3000 steps; A3: reach + push + pick in one
# model, scene camera, 3000 steps (the shipped model is its step 2000)
done_at "$RUNS/V2_pick_fade" 1000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/pick_wrist_fade" --state-history 3,6,12 --out "$RUNS/V2_pick_fade" --steps 1000 \
  $common $(resume "$RUNS/V2_pick_fade")
done_at "$RUNS/Z2_put_fade" 3000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/put_wrist_fade" --state-history 3,6,12 --out "$RUNS/Z2_put_fade" --steps 3000 \
  $common --ckpt-every 1000 $(resume "$RUNS/Z2_put_fade")
done_at "$RUNS/A3_rpp_fade" 3000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" --state-history 3,6,12 --out "$RUNS/A3_rpp_fade" \
  --steps 3000 $common --ckpt-every 1000 $(resume "$RUNS/A3_rpp_fade")
# P1-P3 (seventh round): put alone, one change at a time against Z2 at 2000 steps: the token form of
# the instruction, then WordPool queries, then the goal query on the next gripper event
put_args="--data $DATA/put_wrist_fade --state-history 3,6,12 --steps 2000 --ckpt-every 1000"
done_at "$RUNS/P1_put_tokens" 2000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad $put_args \
  --text-tokens 24 --out "$RUNS/P1_put_tokens" $common $(resume "$RUNS/P1_put_tokens")
done_at "$RUNS/P2_put_pool" 2000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad $put_args \
  --text-tokens 24 --text-pool 2 --out "$RUNS/P2_put_pool" $common $(resume "$RUNS/P2_put_pool")
done_at "$RUNS/P3_put_keyframe" 2000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad $put_args \
  --text-tokens 24 --text-pool 2 --goal-target keyframe --out "$RUNS/P3_put_keyframe" $common \
  $(resume "$RUNS/P3_put_keyframe")
done_at "$RUNS/P4_put_keyframe_sentence" 2000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  $put_args --goal-target keyframe --out "$RUNS/P4_put_keyframe_sentence" $common \
  $(resume "$RUNS/P4_put_keyframe_sentence")
# B4: the four families in one model with P3's recipe, 4000 steps (shipped; the README's 5000 and
# 6000 rows continue this run with --resume --steps 6000)
done_at "$RUNS/B4_all_tokens" 4000 || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
  --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade" --state-history 3,6,12 \
  --text-tokens 24 --text-pool 2 --goal-target keyframe --out "$RUNS/B4_all_tokens" --steps 4000 $common \
  --ckpt-every 1000 $(resume "$RUNS/B4_all_tokens")
# D1: B4's step 4000 (its optimizer state too) resumed with a decay phase only: the rate held to step
# 4000, then a half cosine to a tenth at 5500 (warmup-stable-decay). E1: the same with word dropout.
decay_phase() {  # row extra-args...
  local row=$1; shift
  if ! done_at "$RUNS/$row" 5500; then
    if [ ! -d "$RUNS/$row/checkpoints" ]; then
      mkdir -p "$RUNS/$row/checkpoints"
      cp -r "$RUNS/B4_all_tokens/checkpoints/step_00004000" "$RUNS/$row/checkpoints/"
      echo step_00004000 > "$RUNS/$row/checkpoints/LATEST"
    fi
    lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
      --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade" \
      --state-history 3,6,12 --text-tokens 24 --text-pool 2 --goal-target keyframe --out "$RUNS/$row" --steps 5500 $common \
      --lr-schedule cosine --lr-decay-start 4000 --resume "$@"
  fi
}
decay_phase D1_b4_decay
decay_phase E1_wdrop --word-dropout 0.15
decay_phase E2_wdrop30 --word-dropout 0.3
# E4: E2 with a longer decay phase (B4 step 4000 resumed to 7000)
if ! done_at "$RUNS/E4_long" 7000; then
  [ -d "$RUNS/E4_long/checkpoints" ] || { mkdir -p "$RUNS/E4_long/checkpoints"
    cp -r "$RUNS/B4_all_tokens/checkpoints/step_00004000" "$RUNS/E4_long/checkpoints/"
    echo step_00004000 > "$RUNS/E4_long/checkpoints/LATEST"; }
  lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
    --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade" --state-history 3,6,12 \
    --text-tokens 24 --text-pool 2 --goal-target keyframe --out "$RUNS/E4_long" --steps 7000 $common \
    --lr-schedule cosine --lr-decay-start 4000 --word-dropout 0.3 --resume
fi
# E3: E2 + 300 put episodes that start from a missed grasp (the recovery: open, grasp again)
[ -f "$DATA/put_regrasp/meta/info.json" ] || lapa sim record --suite put --episodes 300 --seed 700000 \
  --out "$DATA/put_regrasp" $opts --dart-fade 0.03 --missed-grasp 0.05
# (a resumed run refuses changed data, whose action normalisation differs: E3 starts from B4's weights)
done_at "$RUNS/E3_regrasp" 1500 || lapa train finetune --init "$RUNS/B4_all_tokens/checkpoints/step_00004000" \
  --paraphrase broad --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade" \
  "$DATA/put_regrasp" --state-history 3,6,12 --goal-target keyframe --word-dropout 0.3 --out "$RUNS/E3_regrasp" \
  --steps 1500 $common --lr-schedule cosine $(resume "$RUNS/E3_regrasp")
# F1, F2: E2's recipe in one run from L (word dropout throughout): 3000 steps decayed from 2000, 4000 from 3000
for spec in F1_short:3000:2000 F2_4000:4000:3000; do
  IFS=: read -r row steps decay <<< "$spec"
  done_at "$RUNS/$row" "$steps" || lapa train finetune --init "$RUNS/L_lapa" --paraphrase broad \
    --data "$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade" --state-history 3,6,12 \
    --text-tokens 24 --text-pool 2 --goal-target keyframe --word-dropout 0.3 --out "$RUNS/$row" --steps "$steps" \
    $common --lr-schedule cosine --lr-decay-start "$decay" $(resume "$RUNS/$row")
done

# -- tenth round: the shipped chain in bf16 (--precision bf16), from the latent-pretrained trunk: L (3000
#    steps), B4 (4000), then decay phases with the instruction noise levers; R2 runs B4 on to 6000 first
bf="--precision bf16 --threads 2"
ALL4=("$DATA/reach" "$DATA/push" "$DATA/pick_wrist_fade" "$DATA/put_wrist_fade")
big="--paraphrase broad --state-history 3,6,12 --text-tokens 24 --text-pool 2 --goal-target keyframe"
done_at "$RUNS/R_L" 3000 || lapa train finetune --init "$RUNS/pretrain" --goal-aux --data $RP --out "$RUNS/R_L" \
  --steps 3000 $common $bf $(resume "$RUNS/R_L")
done_at "$RUNS/R_B4" 4000 || lapa train finetune --init "$RUNS/R_L" --data "${ALL4[@]}" $big --out "$RUNS/R_B4" \
  --steps 4000 $common --ckpt-every 1000 $bf $(resume "$RUNS/R_B4")
continue_from() {  # row from-run from-step steps decay-start extra-args...: resume a copy of from-run's checkpoint
  local row=$1 from=$2 at=$3 steps=$4 decay=$5; shift 5
  done_at "$RUNS/$row" "$steps" && return
  if [ ! -d "$RUNS/$row/checkpoints" ]; then
    mkdir -p "$RUNS/$row/checkpoints"
    cp -r "$RUNS/$from/checkpoints/step_$(printf %08d "$at")" "$RUNS/$row/checkpoints/"
    echo "step_$(printf %08d "$at")" > "$RUNS/$row/checkpoints/LATEST"
  fi
  local schedule=()
  [ "$decay" = none ] || schedule=(--lr-schedule cosine --lr-decay-start "$decay")
  lapa train finetune --init "$RUNS/R_L" --data "${ALL4[@]}" $big --out "$RUNS/$row" --steps "$steps" $common $bf \
    "${schedule[@]}" --resume "$@"
}
continue_from R_bf16 R_B4 4000 5500 4000 --word-dropout 0.3
continue_from X1_noise40 R_B4 4000 5500 4000 --word-dropout 0.3 --word-noise 0.4
continue_from X2_wdrop50 R_B4 4000 5500 4000 --word-dropout 0.5
continue_from X3_snoise100 R_B4 4000 5500 4000 --word-dropout 0.3 --word-noise 0.4 --sentence-noise 1.0
continue_from R2_B6000 R_B4 4000 6000 none
continue_from R2_noise40 R2_B6000 6000 7500 6000 --word-dropout 0.3 --word-noise 0.4
continue_from R2_snoise50 R2_B6000 6000 7500 6000 --word-dropout 0.3 --word-noise 0.4 --sentence-noise 0.5
# S rows: sentence noise S from the start of B4 (on R_L; extra B4 flags after S), then the decay phase with it
sentence_noise_chain() {  # row S [B4 flags...]
  local row=$1 noise=$2; shift 2
  done_at "$RUNS/${row}_B6000" 6000 || lapa train finetune --init "$RUNS/R_L" --data "${ALL4[@]}" $big \
    --out "$RUNS/${row}_B6000" --steps 6000 $common --ckpt-every 1000 $bf --sentence-noise "$noise" "$@" \
    $(resume "$RUNS/${row}_B6000")
  continue_from "$row" "${row}_B6000" 6000 7500 6000 --word-dropout 0.3 --word-noise 0.4 --sentence-noise "$noise"
}
sentence_noise_chain S1_snoise_all 0.5  # tenth round (shipped in the eleventh)
# -- eleventh round: sentence noise 1.0 (S2), then also the word augmentations from the start of B4 (S3)
sentence_noise_chain S2_snoise100 1.0
sentence_noise_chain S3_words_all 1.0 --word-dropout 0.3 --word-noise 0.4

# -- closed loop: the same seeds for every row, seen and unseen instructions
evaluate() {  # row checkpoint suite-families... [-- extra lapa eval args]
  local row=$1 ckpt=$2; shift 2
  local fams=() extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do fams+=("$1"); shift; done
  [ $# -gt 0 ] && shift && extra=("$@")
  for fam in "${fams[@]}"; do
    for cond in seen unseen; do
      out="$RUNS/eval/${row}_${fam}_${cond}.json"
      [ -f "$out" ] || lapa eval --ckpt "$ckpt" --suite $fam --episodes "$EPISODES" --json "$out" \
        $( [ $cond = unseen ] && echo --held-out ) "${extra[@]}"
    done
  done
}
evaluate D_scratch "$RUNS/D_scratch" reach push
evaluate L_lapa "$RUNS/L_lapa" reach push
evaluate P_lapa_para "$RUNS/P_lapa_para" reach push
evaluate P_lapa_para_ensemble "$RUNS/P_lapa_para" reach push -- --chunk-mode ensemble
evaluate Q_lapa_para_4500 "$RUNS/Q_lapa_para_4500" reach push
evaluate F_lapa_all4 "$RUNS/F_lapa_all4" reach push pick put
evaluate G_pick "$RUNS/G_pick" pick
evaluate H_put "$RUNS/H_put" put
evaluate R_lapa_broad "$RUNS/R_lapa_broad" reach push
evaluate S1_lapa_pt "$RUNS/S1_lapa_pt" reach push
evaluate R_lapa_broad_ensemble0.5 "$RUNS/R_lapa_broad" reach push -- --chunk-mode ensemble --ensemble-decay 0.5
evaluate T_lapa_broad_hist "$RUNS/T_lapa_broad_hist" reach push
evaluate T_lapa_broad_hist_ensemble0.5 "$RUNS/T_lapa_broad_hist" reach push -- --chunk-mode ensemble --ensemble-decay 0.5
evaluate T_seed1_ensemble0.5 "$RUNS/T_seed1" reach push -- --chunk-mode ensemble --ensemble-decay 0.5
evaluate S2_lapa_pt_broad "$RUNS/S2_lapa_pt_broad" reach push
ensemble=(-- --chunk-mode ensemble --ensemble-decay 0.5)
evaluate V_pick_hist_500_ensemble0.5 "$RUNS/V_pick_hist" pick "${ensemble[@]}"
evaluate W_pick_hist_wrist_500_ensemble0.5 "$RUNS/W_pick_hist_wrist/checkpoints/step_00000500" pick "${ensemble[@]}"
evaluate W_pick_hist_wrist_1000_ensemble0.5 "$RUNS/W_pick_hist_wrist" pick "${ensemble[@]}"
evaluate W2_pick_wrist_cosine_ensemble0.5 "$RUNS/W2_pick_wrist_cosine" pick "${ensemble[@]}"
evaluate Y_pick_wrist_fade_500_ensemble0.5 "$RUNS/Y_pick_wrist_fade/checkpoints/step_00000500" pick "${ensemble[@]}"
evaluate Y_pick_wrist_fade_1000_ensemble0.5 "$RUNS/Y_pick_wrist_fade" pick "${ensemble[@]}"
evaluate Z_put_wrist_fade_1000_ensemble0.5 "$RUNS/Z_put_wrist_fade" put "${ensemble[@]}"
evaluate V2_pick_fade_500_ensemble0.5 "$RUNS/V2_pick_fade/checkpoints/step_00000500" pick "${ensemble[@]}"
evaluate V2_pick_fade_1000_ensemble0.5 "$RUNS/V2_pick_fade" pick "${ensemble[@]}"
evaluate Z2_put_fade_2000_ensemble0.5 "$RUNS/Z2_put_fade/checkpoints/step_00002000" put "${ensemble[@]}"
evaluate Z2_put_fade_3000_ensemble0.5 "$RUNS/Z2_put_fade" put "${ensemble[@]}"
for row in P1_put_tokens P2_put_pool P3_put_keyframe P4_put_keyframe_sentence; do
  evaluate ${row}_2000_ensemble0.5 "$RUNS/$row" put "${ensemble[@]}"
done
evaluate B4_all_tokens_4000_ensemble0.5 "$RUNS/B4_all_tokens" reach push pick put "${ensemble[@]}"
for row in D1_b4_decay E1_wdrop E2_wdrop30; do
  evaluate ${row}_5500_ensemble0.5 "$RUNS/$row" reach push pick put "${ensemble[@]}"
done
evaluate E3_regrasp_1500_ensemble0.5 "$RUNS/E3_regrasp" reach push pick put "${ensemble[@]}"
evaluate E4_long_7000_ensemble0.5 "$RUNS/E4_long" reach push pick put "${ensemble[@]}"
evaluate F1_short_3000_ensemble0.5 "$RUNS/F1_short" reach push pick put "${ensemble[@]}"
evaluate F2_4000_4000_ensemble0.5 "$RUNS/F2_4000" reach push pick put "${ensemble[@]}"
for row in R_bf16 X1_noise40 X2_wdrop50 X3_snoise100; do
  evaluate ${row}_5500_ensemble0.5 "$RUNS/$row" reach push pick put "${ensemble[@]}"
done
for row in R2_noise40 R2_snoise50 S1_snoise_all S2_snoise100 S3_words_all; do
  evaluate ${row}_7500_ensemble0.5 "$RUNS/$row" reach push pick put "${ensemble[@]}"
done
mkdir -p "$RUNS/eval/seeds2"
for row in S1_snoise_all S2_snoise100; do  # put on a second seed set (the default suite's put seeds): 100 episodes
  for cond in seen unseen; do
    out="$RUNS/eval/seeds2/${row}_7500_ensemble0.5_put_${cond}_seeds2.json"
    [ -f "$out" ] || lapa eval --ckpt "$RUNS/$row" --suite put --seed-base 50300000 --episodes "$EPISODES" \
      --json "$out" "${ensemble[@]:1}" $( [ $cond = unseen ] && echo --held-out )
  done
done
for swap in seen-sentence seen-words; do  # which instruction path carries the held-out put gap (X1)
  [ -f "$RUNS/swap_$swap.json" ] || python experiments/policy/sentence_swap.py --ckpt "$RUNS/X1_noise40" \
    --swap $swap --json "$RUNS/swap_$swap.json"
  [ -f "$RUNS/swap_S2_$swap.json" ] || python experiments/policy/sentence_swap.py --ckpt "$RUNS/S2_snoise100" \
    --swap $swap --json "$RUNS/swap_S2_$swap.json"
done
evaluate A3_rpp_fade_2000_ensemble0.5 "$RUNS/A3_rpp_fade/checkpoints/step_00002000" reach push pick "${ensemble[@]}"
evaluate A3_rpp_fade_3000_ensemble0.5 "$RUNS/A3_rpp_fade" reach push pick "${ensemble[@]}"
# the shipped model: A3 at step 2000 with its latent head (the intent preview; acting unchanged)
done_at "$RUNS/A3_latent_head" 1000 || lapa train latent-head --ckpt "$RUNS/A3_rpp_fade/checkpoints/step_00002000" \
  --labels "$RUNS/labels.parquet" --latent-init "$RUNS/pretrain" --out "$RUNS/A3_latent_head" --steps 1000 \
  --lr 1e-3 --batch-size 64 --augment shift --threads 1 $(resume "$RUNS/A3_latent_head")
for row in D_scratch L_lapa; do
  [ -f "$RUNS/eval/probe_$row.json" ] || lapa eval --ckpt "$RUNS/$row" --grounding-probe 20 --json "$RUNS/eval/probe_$row.json"
done
lapa ablation --evals "$RUNS/eval" --out experiments/policy --descriptions experiments/policy/rows.json --plot-last 14
