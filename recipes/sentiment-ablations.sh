#!/usr/bin/env bash
# Ablations of the sentiment experiment (run recipes/sentiment.sh SIZE first; this reuses its
# model, data, DPO and reverse-DPO folders):
#   1. the four teacher variants: theorem1, contrastive, adaptive, aligndistil (paper Sec. 4);
#   2. constant alpha 1 and 2 against adaptive alpha_t (paper Table 3);
#   3. off-policy against on-policy distillation;
#   4. convergence: DPO and AlignDistil checkpoints every few steps (paper Figure 2);
#   5. the reward/KL frontier: DPO at 3 strengths (lr) and AlignDistil at 3 (alpha-max), one figure.
# Everything is evaluated with the same judge (VADER), prompts, samples and KL estimate.
# Usage: bash recipes/sentiment-ablations.sh [quick|full]     (quick: 62 min on 2 CPU cores)
set -euo pipefail
SIZE="${1:-quick}"
AD="${AD:-aligndistil}"
RUN="${RUN_DIR:-runs/sentiment-$SIZE}"
ABL="$RUN/ablations"
MODEL="${MODEL_DIR:-$RUN/smollm2-135m-instruct}"
DATA="$RUN/data"
case "$SIZE" in
  quick) BATCH=4; EPOCHS=1; AD_LR=2e-6; GEN=24; EVAL_PROMPTS=48; EVAL_SAMPLES=2; SAVE=6 ;;
  full)  BATCH=64; EPOCHS=1; AD_LR=2e-6; GEN=48; EVAL_PROMPTS=500; EVAL_SAMPLES=4; SAVE=10 ;;
  *) echo "usage: bash recipes/sentiment-ablations.sh [quick|full]" >&2; exit 2 ;;
esac
if [[ "${ALIGNDISTIL_RECIPE_TINY:-0}" == "1" ]]; then BATCH=4; EPOCHS=1; GEN=8; EVAL_PROMPTS=4; EVAL_SAMPLES=1; SAVE=1; fi
for need in "$RUN/dpo" "$RUN/reverse-dpo" "$DATA/train-split.jsonl"; do
  [[ -e "$need" ]] || { echo "missing $need: run 'bash recipes/sentiment.sh $SIZE' first" >&2; exit 2; }
done
mkdir -p "$ABL"
source "$(dirname "$0")/_common.sh"    # complete, stage, MIXED_PRECISION
COMMON=(--max-length 256 --max-prompt-length 128)
TRAIN=(--batch-size "$BATCH" --micro-batch-size "$BATCH" --epochs "$EPOCHS" --warmup-ratio 0.1 --mixed-precision "$MIXED_PRECISION" "${COMMON[@]}")
teacher_and_student() {  # NAME, then build-teacher options
  local name="$1"; shift
  if ! complete "$ABL/teacher-$name"; then
    stage "build-teacher $name: $*"
    $AD build-teacher --dpo "$RUN/dpo" --reverse-dpo "$RUN/reverse-dpo" --reference "$MODEL" \
        --data "$DATA/train-split.jsonl" --output "$ABL/teacher-$name" "${COMMON[@]}" "$@"
  fi
  if ! complete "$ABL/ad-$name"; then
    stage "distill $name"
    $AD distill --model "$MODEL" --teacher "$ABL/teacher-$name" --output "$ABL/ad-$name" --lr "$AD_LR" \
        --save-steps "$SAVE" "${TRAIN[@]}"
  fi
}

EVAL=(--reference "$MODEL" --prompts "$DATA/eval_prompts.jsonl" --judge sentiment --samples-per-prompt "$EVAL_SAMPLES"
      --max-new-tokens "$GEN" --max-prompts "$EVAL_PROMPTS" "${COMMON[@]}")
evaluate() {  # NAME, then --model/--name/--group options
  local name="$1"; shift
  if ! complete "$ABL/$name"; then
    stage "evaluate $name"
    $AD evaluate --output "$ABL/$name" "$@" "${EVAL[@]}"
  fi
}

# 5. the reward/KL frontier first (the paper's headline comparison): DPO at three learning rates
#    (the sentiment run's lr 1e-5 and two more), AlignDistil at three alpha-max values
for lr in 3e-6 3e-5; do
  if ! complete "$ABL/dpo-lr$lr"; then
    stage "train-dpo lr $lr"
    $AD train-dpo --model "$MODEL" --data "$DATA/train-split.jsonl" --output "$ABL/dpo-lr$lr" --lr "$lr" \
        --precompute-reference --save-steps "$SAVE" "${TRAIN[@]}"
  fi
done
teacher_and_student aligndistil-amax5 --variant aligndistil --alpha-max 5
teacher_and_student aligndistil-amax60 --variant aligndistil --alpha-max 60
evaluate eval-frontier --model "$MODEL" --name reference --group reference \
    --model "$ABL/dpo-lr3e-6" --name "dpo lr3e-6" --group dpo --model "$RUN/dpo" --name "dpo lr1e-5" --group dpo \
    --model "$ABL/dpo-lr3e-5" --name "dpo lr3e-5" --group dpo \
    --model "$ABL/ad-aligndistil-amax5" --name "aligndistil amax5" --group aligndistil \
    --model "$RUN/aligndistil" --name "aligndistil amax20" --group aligndistil \
    --model "$ABL/ad-aligndistil-amax60" --name "aligndistil amax60" --group aligndistil \
    --runs "$ABL/dpo-lr3e-5" --runs "$RUN/aligndistil"

# 1-3. teacher variants, constant alpha (beta0/beta) against adaptive, off- against on-policy
teacher_and_student adaptive --variant adaptive
teacher_and_student contrastive-a1 --variant contrastive --alpha 1
teacher_and_student contrastive-a2 --variant contrastive --alpha 2
teacher_and_student theorem1-a1 --variant theorem1 --alpha 1
if ! complete "$ABL/ad-on-policy"; then
  stage "distill on-policy"
  $AD distill --model "$MODEL" --dpo "$RUN/dpo" --reverse-dpo "$RUN/reverse-dpo" --on-policy \
      --prompts "$DATA/train-split.jsonl" --max-new-tokens "$GEN" --output "$ABL/ad-on-policy" --lr "$AD_LR" \
      --save-steps "$SAVE" "${TRAIN[@]}"
fi
evaluate eval-variants --model "$MODEL" --name reference --group reference \
    --model "$RUN/aligndistil" --name "aligndistil (reverse, adaptive)" --group variants \
    --model "$ABL/ad-adaptive" --name "adaptive (reference, adaptive)" --group variants \
    --model "$ABL/ad-contrastive-a1" --name "contrastive a=1" --group variants \
    --model "$ABL/ad-contrastive-a2" --name "contrastive a=2" --group variants \
    --model "$ABL/ad-theorem1-a1" --name "theorem1 a=1" --group variants \
    --model "$ABL/ad-on-policy" --name "aligndistil on-policy" --group on-policy --runs "$ABL/ad-on-policy"

# 4. convergence: every saved checkpoint of DPO (lr 3e-5) and AlignDistil (alpha-max 5), same judge and prompts
CKPTS=()
for run in "$ABL/dpo-lr3e-5" "$ABL/ad-aligndistil-amax5"; do
  for ck in $(ls -dv "$run"/checkpoint-* 2>/dev/null); do  # -v: checkpoint-6 before checkpoint-12
    fam=$(basename "$run"); CKPTS+=(--model "$ck" --name "$fam step ${ck##*-}" --group "$fam")
  done
  CKPTS+=(--model "$run" --name "$(basename "$run") final" --group "$(basename "$run")")
done
evaluate eval-convergence "${CKPTS[@]}"
echo "ablation results: $ABL/eval-frontier, $ABL/eval-variants, $ABL/eval-convergence"
