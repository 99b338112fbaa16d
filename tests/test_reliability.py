"""Reliability: exact resume, clean interruption, non-finite guards, refusals, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import write_bytes_atomic
from test_cli_pipeline import cli, record, weights, write_pairs

TINY = ["--batch-size", "2", "--micro-batch-size", "1", "--lr", "1e-3", "--max-length", "64",
        "--warmup-ratio", "0"]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_checkpoints_and_resume_is_bitwise(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    args = ["train-dpo", "--model", str(tiny_model_dir), "--data", str(data), *TINY, "--max-steps", "40"]
    cli(*args, "--output", tmp_path / "full")

    out = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "aligndistil_cli", *args, "--output", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and metrics(out)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, output
    assert record(out)["status"] == "interrupted"
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (out / "model.safetensors").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped_at < 40

    cli(*args, "--output", out, "--resume")
    assert record(out)["status"] == "complete"
    full, resumed = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)   # bitwise
    assert [m["loss"] for m in metrics(out)] == [m["loss"] for m in metrics(tmp_path / "full")]


def test_resume_from_a_checkpoint_is_bitwise_for_distill(tmp_path, tiny_model_dir, tiny_model_factory):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    live = ["--dpo", tiny_model_factory(1), "--reverse-dpo", tiny_model_factory(2), "--data", data]
    base = ["distill", "--model", tiny_model_dir, *live, *TINY, "--max-steps", "6", "--save-steps", "3"]
    cli(*base, "--output", tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    cli(*base, "--output", tmp_path / "b", "--resume")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [m["loss"] for m in metrics(tmp_path / "a")][3:] == [m["loss"] for m in metrics(tmp_path / "b")]


def test_checkpoint_missing_a_component_is_refused(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    base = ["train-dpo", "--model", tiny_model_dir, "--data", data, *TINY, "--max-steps", "2", "--save-steps", "1"]
    cli(*base, "--output", tmp_path / "run")
    (tmp_path / "run" / "checkpoint-1" / "optimizer.pt").unlink()
    result = cli(*base, "--output", tmp_path / "run", "--resume-from", tmp_path / "run" / "checkpoint-1", code=2)
    assert "optimizer.pt" in result.output


def test_nonfinite_loss_stops_with_step_and_example_ids(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    base = ["train-dpo", "--model", tiny_model_dir, "--data", data, "--batch-size", "2", "--max-length", "64",
            "--lr", "1e30", "--warmup-ratio", "0", "--max-grad-norm", "1e30", "--max-steps", "4"]
    result = cli(*base, "--output", tmp_path / "err", code=3)
    assert "non-finite" in result.output and "step" in result.output and "examples" in result.output
    assert record(tmp_path / "err")["status"] == "failed"
    cli(*base, "--output", tmp_path / "skip", "--on-nonfinite", "skip")
    last = metrics(tmp_path / "skip")[-1]
    assert last["skipped_steps"] >= 1
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "skip").values())


def test_output_folder_of_another_stage_is_refused(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "run"
    cli("train-dpo", "--model", tiny_model_dir, "--data", data, *TINY, "--max-steps", "1", "--output", out)
    before = (out / "model.safetensors").read_bytes()
    result = cli("distill", "--model", tiny_model_dir, "--dpo", tiny_model_dir, "--reverse-dpo", tiny_model_dir,
                 "--data", data, "--output", out, code=2)
    assert "train-dpo" in result.output and "--overwrite" in result.output
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("content,needle", [(None, "does not exist"), ('{"prompt": "a"}\n{bad json\n', "line")])
def test_bad_data_file_is_one_line_error(tmp_path, tiny_model_dir, content, needle):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    result = cli("train-dpo", "--model", tiny_model_dir, "--data", data, "--output", tmp_path / "o", code=2)
    assert needle in result.output and "Traceback" not in result.output


def test_model_folder_without_weights_is_refused(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, empty / item.name)
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    result = cli("train-dpo", "--model", empty, "--data", data, "--output", tmp_path / "o", code=2)
    assert "weights" in result.output


def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_bytes(b"complete")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AlignDistilError, match="no space"):
        write_bytes_atomic(target, b"new contents")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
