"""--fsdp (FSDP2) with 2 CPU processes (gloo) equals 1 unsharded process; its folders are plain."""

from __future__ import annotations

import json
import shutil

import pytest

from test_cli_pipeline import cli, weights, write_pairs
from test_distributed import ARGS, assert_same_run, assert_same_run_tail, torchrun


@pytest.mark.slow
def test_fsdp_dpo_equals_one_process_and_reloads(tmp_path, tiny_model_dir):
    # 7 pairs, global batch 4: the second step's batch of 3 leaves rank 1 one micro-batch short
    data = write_pairs(tmp_path / "pairs.jsonl", n=7)
    dpo = ["train-dpo", "--model", tiny_model_dir, "--data", data, *ARGS]
    cli(*dpo, "--output", tmp_path / "one")
    torchrun(*dpo, "--fsdp", "--output", tmp_path / "fsdp")
    assert_same_run(tmp_path / "one", tmp_path / "fsdp")

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "fsdp"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    for k, v in weights(folder).items():
        assert model.state_dict()[k].equal(v)


@pytest.mark.slow
def test_fsdp_distill_from_cache_equals_one_process(tmp_path, tiny_model_dir, tiny_model_factory):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    cli("build-teacher", "--dpo", tiny_model_factory(1), "--reverse-dpo", tiny_model_factory(2), "--data", data,
        "--max-length", "64", "--top-k", "8", "--output", tmp_path / "teacher")
    distill = ["distill", "--model", tiny_model_dir, "--teacher", tmp_path / "teacher", *ARGS]
    cli(*distill, "--output", tmp_path / "one")
    torchrun(*distill, "--fsdp", "--output", tmp_path / "fsdp")
    assert_same_run(tmp_path / "one", tmp_path / "fsdp")


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_unsharded_process(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    base = ["train-dpo", "--model", tiny_model_dir, "--data", data, *ARGS[:-1], "4", "--save-steps", "2", "--fsdp"]
    torchrun(*base, "--output", tmp_path / "fsdp")
    checkpoint = tmp_path / "fsdp" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("*.safetensors")) == ["model.safetensors",
                                                                         "rng_state.safetensors"]
    for name in ("mixed", "sharded"):
        (tmp_path / name).mkdir()
        shutil.copytree(checkpoint, tmp_path / name / "checkpoint-2")
    cli(*base, "--output", tmp_path / "mixed", "--resume")  # one process: --fsdp is a no-op
    assert_same_run_tail(tmp_path / "fsdp", tmp_path / "mixed")
    torchrun(*base, "--output", tmp_path / "sharded", "--resume")  # loads into the sharded model
    assert_same_run_tail(tmp_path / "fsdp", tmp_path / "sharded")


@pytest.mark.slow
def test_fsdp_on_policy_equals_one_process(tmp_path, tiny_model_dir, tiny_model_factory):
    """Sampling from the sharded student (HF generate with synced ranks) and the live-teacher
    logits path give the 1-process run."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    distill = ["distill", "--model", tiny_model_dir, "--dpo", tiny_model_factory(1), "--reverse-dpo",
               tiny_model_factory(2), "--on-policy", "--prompts", data, "--max-new-tokens", "12", *ARGS]
    cli(*distill, "--output", tmp_path / "one")
    torchrun(*distill, "--fsdp", "--output", tmp_path / "fsdp")
    assert_same_run(tmp_path / "one", tmp_path / "fsdp")
