"""End to end through the CLI on tiny random models: every stage's artifacts, and the
invariants that tie the stages together (cached == live, accumulation, resume)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from aligndistil_cli.cli.app import app

GOOD = ["the movie was great", "wonderful acting", "I loved this story", "a truly delightful experience"]
BAD = ["the film was terrible", "awful and dull", "what a waste of time", "the plot was boring"]
TRAIN = ["--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3", "--max-length", "64"]


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def write_pairs(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"prompt": f"review {i}: the movie", "chosen": rng.choice(GOOD), "rejected": rng.choice(BAD)}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def record(folder: Path) -> dict:
    return json.loads((folder / "aligndistil.json").read_text())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """train-dpo -> train-reverse-dpo -> build-teacher (top-k and dense) on 12 pairs."""
    root = tmp_path_factory.mktemp("pipeline")
    data = write_pairs(root / "pairs.jsonl")
    cli("train-dpo", "--model", tiny_model_dir, "--data", data, "--output", root / "dpo", *TRAIN)
    cli("train-reverse-dpo", "--model", tiny_model_dir, "--data", data, "--output", root / "rev", *TRAIN)
    common = ["--dpo", root / "dpo", "--reverse-dpo", root / "rev", "--data", data, "--max-length", "64",
              "--shard-size", "5"]
    cli("build-teacher", *common, "--output", root / "teacher", "--top-k", "16")
    cli("build-teacher", *common, "--output", root / "dense", "--top-k", "0", "--cache-dtype", "float32")
    return {"root": root, "data": data, "ref": tiny_model_dir}


def test_dpo_stages_write_loadable_model_folders(pipeline):
    root = pipeline["root"]
    for name, reversed_ in (("dpo", False), ("rev", True)):
        folder = root / name
        rec = record(folder)
        assert rec["status"] == "complete" and rec["reversed"] is reversed_
        assert rec["stage"] == ("train-reverse-dpo" if reversed_ else "train-dpo")
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "metrics.jsonl", "aligndistil_config.yaml"} <= {p.name for p in folder.iterdir()}
        metrics = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3]
        assert all({"loss", "rewards/accuracies", "rewards/margins", "logps/chosen"} <= set(m) for m in metrics)
        AutoModelForCausalLM.from_pretrained(folder)
        assert not any(p.name.startswith(".tmp-") for p in folder.iterdir())


def test_reverse_dpo_learns_the_opposite_preference(pipeline):
    """Same data, swapped inside the stage: the two models' last margins have opposite signs
    with respect to the dataset's chosen response."""
    root = pipeline["root"]
    first = json.loads((root / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    rev_first = json.loads((root / "rev" / "metrics.jsonl").read_text().splitlines()[0])
    # At step 1 both policies equal the reference: margins 0, loss log 2.
    assert abs(first["loss"] - 0.6931) < 1e-3 and abs(rev_first["loss"] - 0.6931) < 1e-3
    dpo_w, rev_w = weights(root / "dpo"), weights(root / "rev")
    assert any(not torch.equal(dpo_w[k], rev_w[k]) for k in dpo_w)


def test_teacher_cache_is_verified_and_summarised(pipeline):
    root = pipeline["root"]
    cli("verify-teacher", root / "teacher")
    manifest = json.loads((root / "teacher" / "manifest.json").read_text())
    assert manifest["top_k"] == 16 and manifest["teacher"]["variant"] == "aligndistil"
    assert manifest["counts"]["sequences"] == 12 and len(manifest["shards"]) == 3
    summary = record(root / "teacher")["metrics"]
    assert 0 < summary["kept_mass_median"] <= 1.0 + 1e-3
    assert summary["alpha_p5"] >= 1e-3 and summary["alpha_p95"] <= 20 + 1e-3


def test_distill_from_cache_live_and_on_policy(pipeline, tmp_path):
    root, data, ref = pipeline["root"], pipeline["data"], pipeline["ref"]
    live = ["--dpo", root / "dpo", "--reverse-dpo", root / "rev"]
    cli("distill", "--model", ref, "--teacher", root / "teacher", "--output", tmp_path / "cache", *TRAIN)
    cli("distill", "--model", ref, *live, "--data", data, "--output", tmp_path / "live", *TRAIN)
    cli("distill", "--model", ref, *live, "--on-policy", "--prompts", data, "--max-new-tokens", "8",
        "--max-steps", "2", "--output", tmp_path / "on", *TRAIN)
    for mode in ("cache", "live", "on"):
        folder = tmp_path / mode
        assert record(folder)["status"] == "complete"
        metrics = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all(m["loss"] >= 0 and "kl" in m and "mean_alpha" in m for m in metrics)
        AutoModelForCausalLM.from_pretrained(folder)
    on = json.loads((tmp_path / "on" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"expected_token_reward", "kl_to_dpo", "response_length"} <= set(on)
    assert 1 <= on["response_length"] <= 8


def test_dense_cache_equals_live_teacher(pipeline):
    """The loss and gradients of a step from the dense fp32 cache equal the live teacher's."""
    from aligndistil_cli.models import load_model, load_tokenizer
    from aligndistil_cli.stages.distill import CacheTask, DistillConfig, LiveTask
    from aligndistil_cli.stages.teacher import select_sequences
    from aligndistil_cli.teacher.cache import TeacherCache

    root, ref = pipeline["root"], pipeline["ref"]
    cfg = DistillConfig.resolve(None, {"model": str(ref), "output": "unused", "dpo": str(root / "dpo"),
                                       "reverse_dpo": str(root / "rev"), "data": str(pipeline["data"]),
                                       "max_length": 64})
    tok = load_tokenizer(str(ref))
    dev = torch.device("cpu")
    cache = TeacherCache(root / "dense")
    seqs, _ = select_sequences(cfg, tok)
    vocab = cache.vocab_size
    cached = CacheTask(cache, cfg, tok.pad_token_id, vocab, dev)
    dpo, rev = (load_model(str(root / n), dtype="float32", device="cpu") for n in ("dpo", "rev"))
    live = LiveTask(seqs, dpo, rev, cfg, tok.pad_token_id, vocab, dev)
    results = []
    for task in (cached, live):
        student = load_model(str(ref), dtype="float32", device="cpu", train=True)
        out = task.micro_step(student, [0, 3, 7])
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), [p.grad.clone() for p in student.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    for g_cache, g_live in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_cache, g_live, rtol=1e-4, atol=1e-7)


def test_dpo_accumulation_1x4_equals_4x1(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    base = ["train-dpo", "--model", tiny_model_dir, "--data", data, "--batch-size", "4", "--lr", "1e-3",
            "--max-length", "64"]
    cli(*base, "--micro-batch-size", "1", "--output", tmp_path / "a")
    cli(*base, "--micro-batch-size", "4", "--output", tmp_path / "b")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in wa:
        # Adam normalises by |g|: elements whose gradient is ~0 amplify float summation-order noise
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_help_of_every_command_has_an_example():
    names = [c.name for c in app.registered_commands] + ["prepare sentiment"]
    assert {"train-dpo", "train-reverse-dpo", "build-teacher", "distill", "env", "import-gguf",
            "verify-teacher"} <= set(names)
    top = cli("--help").output
    for name in names:
        if " " not in name:
            assert name in top
        out = cli(*name.split(), "--help").output
        assert "Examples" in out and "aligndistil" in out


def test_env_json():
    info = json.loads(cli("env", "--json").output)
    assert info["versions"]["torch"] and "cpu_count" in info
    assert isinstance(info["cpu_bf16_native"], bool)


@pytest.mark.parametrize("precompute", [True, False])
def test_dpo_bf16_mixed_precision_on_cpu(tmp_path, tiny_model_dir, precompute):
    """--mixed-precision bf16 runs on CPU; the reference log-probs (precomputed or live) are taken
    under the same autocast as the policy's, so the first step's margins are exactly 0 and the
    loss is log 2 (a fp32 reference against a bf16 policy would start with a spurious margin)."""
    from aligndistil_cli.models import mixed_precision_enabled

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [mixed_precision_enabled(m, cpu) for m in ("auto", "bf16", "no")] == [False, True, False]
    assert [mixed_precision_enabled(m, cuda) for m in ("auto", "bf16", "no")] == [True, True, False]
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    out = tmp_path / "dpo"
    cli("train-dpo", "--model", tiny_model_dir, "--data", data, "--output", out, "--batch-size", "4",
        "--micro-batch-size", "4", "--max-length", "64", "--mixed-precision", "bf16",
        *(["--precompute-reference"] if precompute else []))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margins"] == 0.0 and first["loss"] == pytest.approx(0.6931472, abs=1e-6)
    assert record(out)["config"]["mixed_precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in weights(out).values())  # fp32 master weights saved
