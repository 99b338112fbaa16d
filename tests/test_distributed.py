"""torchrun with 2 CPU processes (gloo) equals 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_cli_pipeline import cli, weights, write_pairs

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--batch-size", "4", "--micro-batch-size", "1", "--lr", "1e-3", "--max-length", "64", "--max-steps", "3"]


def torchrun(*args: str, nproc: int = 2) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "aligndistil_cli", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def losses(folder: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_for_dpo_distill_and_teacher(tmp_path, tiny_model_dir, tiny_model_factory):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    dpo = ["train-dpo", "--model", tiny_model_dir, "--data", data, *ARGS]
    cli(*dpo, "--output", tmp_path / "dpo1")
    torchrun(*dpo, "--output", tmp_path / "dpo2")
    assert_same_run(tmp_path / "dpo1", tmp_path / "dpo2")

    live = ["--dpo", tiny_model_factory(1), "--reverse-dpo", tiny_model_factory(2)]
    teacher = ["build-teacher", *live, "--data", data, "--max-length", "64", "--top-k", "8", "--shard-size", "3"]
    cli(*teacher, "--output", tmp_path / "t1")
    torchrun(*teacher, "--output", tmp_path / "t2")
    m1, m2 = (json.loads((tmp_path / t / "manifest.json").read_text()) for t in ("t1", "t2"))
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert m1 == m2

    distill = ["distill", "--model", tiny_model_dir, "--teacher", tmp_path / "t1", *ARGS]
    cli(*distill, "--output", tmp_path / "d1")
    torchrun(*distill, "--output", tmp_path / "d2")
    assert_same_run(tmp_path / "d1", tmp_path / "d2")


@pytest.mark.slow
def test_resume_across_a_change_of_process_count(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    base = ["train-dpo", "--model", tiny_model_dir, "--data", data, *ARGS[:-1], "4", "--save-steps", "2"]
    cli(*base, "--output", tmp_path / "one")
    (tmp_path / "mixed").mkdir()
    import shutil

    shutil.copytree(tmp_path / "one" / "checkpoint-2", tmp_path / "mixed" / "checkpoint-2")
    torchrun(*base, "--output", tmp_path / "mixed", "--resume")
    assert_same_run_tail(tmp_path / "one", tmp_path / "mixed")


def assert_same_run_tail(a: Path, b: Path) -> None:
    assert losses(a)[2:] == pytest.approx(losses(b), abs=1e-5)
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
