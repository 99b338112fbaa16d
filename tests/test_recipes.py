"""The quickstart's chain of stages, run by the real recipe on a tiny random model (CI guard
against broken stage interfaces), and the paper recipe's --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = [
    "the movie was great and the acting was wonderful from start to finish",
    "the film was terrible and the plot was boring beyond words",
    "I loved this story , a truly delightful experience for everyone",
    "what a waste of time , awful and dull and far too long",
    "a good answer is short and helpful and the movie was great",
    "the plot was boring but the acting was wonderful in places",
    "numbers and punctuation aside the film was terrible overall",
    "a truly delightful experience and I loved this story a lot",
]


def _env(tmp_path: Path, model: Path) -> dict:
    corpus = tmp_path / "snippets.txt"
    corpus.write_text("".join(f"{i + 1}\t{(-1) ** i * 1.5}\t{t}\n" for i, t in enumerate(SNIPPETS * 3)))
    return {**os.environ, "ALIGNDISTIL_RECIPE_TINY": "1", "MODEL_DIR": str(model), "CORPUS": str(corpus),
            "RUN_DIR": str(tmp_path / "run"), "AD": f"{sys.executable} -m aligndistil_cli",
            "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_sentiment_recipe_chain_on_a_tiny_model(tmp_path, tiny_model_dir):
    env = _env(tmp_path, tiny_model_dir)
    proc = subprocess.run(["bash", str(ROOT / "recipes" / "sentiment.sh"), "quick"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    for stage in ("dpo", "reverse-dpo", "teacher", "aligndistil", "eval"):
        assert json.loads((run / stage / "aligndistil.json").read_text())["status"] == "complete", stage
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert report  # every number the evaluation produced
    # A rerun skips every finished stage and only prints the results.
    again = subprocess.run(["bash", str(ROOT / "recipes" / "sentiment.sh"), "quick"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "== train-dpo" not in again.stdout


def test_paper_recipe_dry_run_validates_every_stage(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "RUN_DIR": str(tmp_path / "run"),
           "AD": f"{sys.executable} -m aligndistil_cli", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "recipes" / "paper-qwen2.5-1.5b-ultrafeedback.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("train-dpo", "train-reverse-dpo", "build-teacher", "distill"):
        assert f"{stage} dry run: config is valid" in proc.stdout + proc.stderr
    assert "alpha_max: 30.0" in proc.stdout + proc.stderr   # the on-policy distill stage
    assert not (tmp_path / "run").exists()                  # a dry run writes nothing
