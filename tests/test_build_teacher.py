"""build-teacher as a stage: row/position alignment, top-k vs dense, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from aligndistil_cli.teacher.cache import TeacherCache
from test_cli_pipeline import cli, write_pairs


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_model_factory):
    root = tmp_path_factory.mktemp("teachers")
    data = write_pairs(root / "pairs.jsonl", n=6)
    return {"root": root, "data": data, "dpo": tiny_model_factory(11), "rev": tiny_model_factory(12),
            "ref": tiny_model_factory(13)}


def build(t, out: Path, *extra, code: int = 0):
    return cli("build-teacher", "--dpo", t["dpo"], "--reverse-dpo", t["rev"], "--data", t["data"],
               "--max-length", "64", "--output", out, *extra, code=code)


def test_row_j_predicts_response_token_j(teachers, tmp_path):
    """Recompute the teacher of one sequence from full forwards: row j must equal the official
    composition at logit position response_start + j - 1, including the final EOS row."""
    build(teachers, tmp_path / "dense", "--top-k", "0", "--cache-dtype", "float32")
    rec = TeacherCache(tmp_path / "dense")[2]
    ids = rec.input_ids.long()[None]
    with torch.no_grad():
        zd = AutoModelForCausalLM.from_pretrained(teachers["dpo"])(ids).logits[0].double()
        zr = AutoModelForCausalLM.from_pretrained(teachers["rev"])(ids).logits[0].double()
    pos = torch.arange(rec.response_start - 1, ids.shape[1] - 1)
    pd, pr = zd[pos].softmax(-1), zr[pos].softmax(-1)
    alpha = 10.0 * (pd - pr).abs().sum(-1) + 1e-3           # official: beta2 * sum|p - q| + 1e-3
    teacher = torch.log_softmax(zd[pos] + alpha[:, None] * (zd[pos] - zr[pos]), -1)
    nxt = ids[0, rec.response_start:]
    reward = 0.1 * (zd[pos].log_softmax(-1) - zr[pos].log_softmax(-1)).gather(-1, nxt[:, None]).squeeze(-1)
    assert rec.logprobs.shape[0] == ids.shape[1] - rec.response_start == len(pos)
    torch.testing.assert_close(rec.logprobs.double(), teacher, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec.alpha.double(), alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rec.reward.double(), reward, rtol=1e-4, atol=1e-6)
    assert int(rec.input_ids[-1]) == 2  # the final EOS (<|im_end|>) has its own row


def test_topk_rows_are_the_dense_rows_top_k(teachers, tmp_path):
    build(teachers, tmp_path / "dense", "--top-k", "0", "--cache-dtype", "float32")
    build(teachers, tmp_path / "topk", "--top-k", "8", "--cache-dtype", "float32")
    dense, topk = TeacherCache(tmp_path / "dense"), TeacherCache(tmp_path / "topk")
    for i in range(len(dense)):
        values, ids = dense[i].logprobs.topk(8, -1)
        torch.testing.assert_close(topk[i].topk_logprobs, values)
        assert torch.equal(topk[i].topk_ids.long(), ids)
        assert (topk[i].topk_logprobs.exp().sum(-1) <= 1 + 1e-5).all()   # the tail keeps the rest


def test_interrupted_build_resumes_to_identical_files(teachers, tmp_path):
    build(teachers, tmp_path / "full", "--shard-size", "2")
    build(teachers, tmp_path / "cut", "--shard-size", "2")
    # An interruption after the first shard: manifest and later shards never written.
    (tmp_path / "cut" / "manifest.json").unlink()
    (tmp_path / "cut" / "shard-00002.safetensors").unlink()
    (tmp_path / "cut" / "aligndistil.json").write_text(json.dumps({"stage": "build-teacher", "status": "interrupted"}))
    build(teachers, tmp_path / "cut", "--shard-size", "2")
    for name in ("manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_flipped_byte_fails_verify_and_distill(teachers, tmp_path, tiny_model_dir):
    build(teachers, tmp_path / "c", "--top-k", "8")
    shard = tmp_path / "c" / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert "sha256" in cli("verify-teacher", tmp_path / "c", code=1).output
    cli("distill", "--model", tiny_model_dir, "--teacher", tmp_path / "c", "--output", tmp_path / "d", code=2)


def test_distill_refuses_a_cache_of_another_tokenizer(teachers, tmp_path):
    from conftest import build_tokenizer, save_model

    build(teachers, tmp_path / "c", "--top-k", "8")
    other_tok = build_tokenizer()
    other_tok.add_tokens(["<extra-token>"])  # same BPE plus one token: a different vocabulary
    other = save_model(tmp_path / "other", other_tok, seed=1)
    result = cli("distill", "--model", other, "--teacher", tmp_path / "c", "--output", tmp_path / "d", code=2)
    assert "tokenizer" in result.output


def test_reference_contrast_variants(teachers, tmp_path):
    build(teachers, tmp_path / "t1", "--reference", teachers["ref"], "--variant", "theorem1", "--alpha", "2",
          "--top-k", "8")
    manifest = json.loads((tmp_path / "t1" / "manifest.json").read_text())
    assert manifest["teacher"]["variant"] == "theorem1" and manifest["teacher"]["contrast"] == "reference"
    rec = TeacherCache(tmp_path / "t1")[0]
    assert torch.allclose(rec.alpha, torch.full_like(rec.alpha, 2.0))
    result = build(teachers, tmp_path / "bad", "--variant", "adaptive", code=2)  # no --reference
    assert "--reference" in result.output
