"""Teacher cache: round trips, resume and multi-rank byte identity, integrity and refusal paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.teacher import cache as tc
from aligndistil_cli.teacher.cache import (
    CacheWriter,
    SequenceRecord,
    TeacherCache,
    check_compatible,
    check_tokenizer,
    collect_shard_infos,
    is_complete,
    verify_teacher,
)

VOCAB = 37


def make_meta(**teacher) -> dict:
    return {
        "teacher": {"variant": "aligndistil", "beta": 0.1, "r": 10.0, **teacher},
        "tokenizer_fingerprint": "tok-" + "a" * 60,
        "model_fingerprints": {"dpo": "d" * 64, "reverse_dpo": "e" * 64},
        "data_fingerprint": {"sha256": "f" * 64},
        "selection": {"split": "train", "limit": None},
    }


def make_records(n: int, top_k: int, seed: int = 0) -> list[SequenceRecord]:
    """Random sequences with valid normalized teacher distributions (varied lengths)."""
    gen = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=gen))
        start = int(torch.randint(1, length, (1,), generator=gen))
        rows = length - start
        logprobs = torch.log_softmax(torch.randn(rows, VOCAB, generator=gen) * 3, -1)
        rec = SequenceRecord(
            example_id=100 + 3 * i,
            input_ids=torch.randint(0, VOCAB, (length,), generator=gen),
            response_start=start,
            alpha=torch.rand(rows, generator=gen) * 5,
            tvd=torch.rand(rows, generator=gen),
            reward=torch.randn(rows, generator=gen),
        )
        if top_k:
            values, ids = torch.topk(logprobs, top_k, -1)
            rec.topk_ids, rec.topk_logprobs = ids.to(torch.int32), values
        else:
            rec.logprobs = logprobs
        records.append(rec)
    return records


def build(folder: Path, records: list[SequenceRecord], *, top_k: int = 5, dtype: str = "float32",
          shard_size: int = 4, meta: dict | None = None, shards: list[int] | None = None,
          finalize: bool = True, rank: int = 0, world_size: int = 1) -> CacheWriter:
    """Write the given (or all owned) shards; finalize from the sidecars when asked."""
    writer = CacheWriter(folder, meta=meta or make_meta(), top_k=top_k, vocab_size=VOCAB,
                         cache_dtype=dtype, shard_size=shard_size, rank=rank, world_size=world_size)
    plan = writer.shard_plan(len(records))
    for s in writer.my_shards() if shards is None else shards:
        if not writer.shard_done(s):
            writer.write_shard(s, [records[i] for i in plan[s]])
    if finalize:
        writer.finalize(writer.collect_shard_infos(len(plan)), {"note": "test"})
    return writer


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_topk_round_trip(tmp_path, dtype):
    records = make_records(10, top_k=5)
    build(tmp_path, records, dtype=dtype)
    cache = TeacherCache(tmp_path, verify=True)
    assert len(cache) == 10 and cache.top_k == 5 and cache.vocab_size == VOCAB
    assert cache.example_ids() == [r.example_id for r in records]
    atol = {"float32": 0.0, "float16": 1e-2, "bfloat16": 6e-2}[dtype]
    for i, want in enumerate(records):
        got = cache[i]
        assert got.example_id == want.example_id and got.response_start == want.response_start
        assert torch.equal(got.input_ids, want.input_ids)
        assert got.topk_logprobs.shape[0] == len(want.input_ids) - want.response_start
        assert got.topk_logprobs.dtype == tc.CACHE_DTYPES[dtype]
        assert torch.equal(got.topk_ids, want.topk_ids.long())
        torch.testing.assert_close(got.topk_logprobs.float(), want.topk_logprobs, atol=atol, rtol=atol)
        for name in ("alpha", "tvd", "reward"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.equal(cache[-1].input_ids, records[-1].input_ids)
    with pytest.raises(IndexError):
        cache[10]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"] == {"sequences": 10,
                                  "response_tokens": sum(r.n_response for r in records)}
    assert [s["sequences"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["summary"] == {"note": "test"} and manifest["cache_dtype"] == dtype
    report = verify_teacher(tmp_path)
    assert report.ok, report.problems
    assert 0 < report.stats["min_mass"] <= report.stats["mean_mass"] <= 1 + 1e-3


def test_dense_round_trip_and_folder_is_tidy(tmp_path):
    records = make_records(5, top_k=0)
    build(tmp_path, records, top_k=0, shard_size=2)
    cache = TeacherCache(tmp_path)
    assert cache.dense
    for i, want in enumerate(records):
        got = cache[i]
        assert got.topk_ids is None and got.logprobs.shape == (want.n_response, VOCAB)
        assert torch.equal(got.logprobs, want.logprobs)
    # Sidecars are removed at finalize: a complete cache is the manifest and its shards only.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    assert verify_teacher(tmp_path).ok


def test_float16_clamps_tiny_logprobs_instead_of_overflowing(tmp_path):
    records = make_records(2, top_k=5)
    records[0].topk_logprobs[0, -1] = -1e6  # finite in fp32, -inf once cast to fp16
    build(tmp_path, records, dtype="float16")
    assert torch.isfinite(TeacherCache(tmp_path)[0].topk_logprobs).all()
    assert verify_teacher(tmp_path).ok


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, monkeypatch):
    records = make_records(11, top_k=4)
    build(tmp_path / "straight", records, top_k=4, dtype="bfloat16", shard_size=3)

    resumed = tmp_path / "resumed"
    build(resumed, records, top_k=4, dtype="bfloat16", shard_size=3, shards=[0, 1], finalize=False)
    (resumed / ".tmp-shard-00002.safetensors-999").write_bytes(b"half a shard")  # the crash
    assert not (resumed / "manifest.json").exists()
    with pytest.raises(AlignDistilError, match="shard-00002"):
        collect_shard_infos(resumed, 4)

    written = []
    real_write = CacheWriter.write_shard
    monkeypatch.setattr(CacheWriter, "write_shard",
                        lambda self, s, recs: written.append(s) or real_write(self, s, recs))
    build(resumed, records, top_k=4, dtype="bfloat16", shard_size=3)
    assert written == [2, 3]  # shards 0 and 1 verified and skipped
    assert folder_bytes(resumed) == folder_bytes(tmp_path / "straight")


def test_resume_recomputes_a_shard_that_no_longer_verifies(tmp_path):
    records = make_records(6, top_k=3)
    writer = build(tmp_path, records, top_k=3, shard_size=3, shards=[0, 1], finalize=False)
    assert writer.shard_done(0) and writer.shard_done(1)
    path = tmp_path / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert writer.shard_done(0) and not writer.shard_done(1)
    # A build of another configuration never reuses these shards.
    other = CacheWriter(tmp_path, meta=make_meta(beta=0.2), top_k=3, vocab_size=VOCAB,
                        cache_dtype="float32", shard_size=3)
    other.shard_plan(6)
    assert not other.shard_done(0)


def test_stale_temporary_is_not_a_shard(tmp_path):
    records = make_records(4, top_k=3)
    writer = CacheWriter(tmp_path, meta=make_meta(), top_k=3, vocab_size=VOCAB,
                         cache_dtype="float32", shard_size=2)
    writer.shard_plan(4)
    writer.write_shard(0, records[:2])
    (tmp_path / ".tmp-shard-00001.safetensors-4242").write_bytes(b"\0" * 64)
    assert writer.shard_done(0) and not writer.shard_done(1)
    with pytest.raises(AlignDistilError, match="shard-00001"):
        writer.collect_shard_infos(2)


def test_flipped_byte_is_caught(tmp_path):
    build(tmp_path, make_records(8, top_k=5))
    path = tmp_path / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) - 7] ^= 0x01  # inside the tensor data, header still parses
    path.write_bytes(bytes(data))
    report = verify_teacher(tmp_path)
    assert not report.ok
    assert any("shard-00001" in p and "sha256" in p for p in report.problems)
    with pytest.raises(AlignDistilError, match="shard-00001.*corrupt"):
        TeacherCache(tmp_path, verify=True)
    TeacherCache(tmp_path)  # without verify the reader only checks presence


def test_corrupt_header_and_bad_values_are_reported(tmp_path):
    build(tmp_path, make_records(4, top_k=5), shard_size=2)
    (tmp_path / "shard-00000.safetensors").write_bytes(b"garbage")
    # A shard with valid layout but impossible values, given a matching manifest entry.
    bad = make_records(2, top_k=5, seed=1)
    tensors = tc.pack_records(bad, top_k=5, vocab_size=VOCAB, dtype=torch.float32)
    tensors["topk_logprobs"][0] = 0.5  # log-probability above 0: mass > 1
    tensors["tvd"][1] = float("nan")
    sha, size = tc._save_shard(tensors, tmp_path / "shard-00001.safetensors")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][1].update(sha256=sha, bytes=size)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    problems = "\n".join(verify_teacher(tmp_path).problems)
    assert "shard-00000.safetensors: cannot be read" in problems
    assert "tvd has non-finite values" in problems
    assert "topk_logprobs exceed 0" in problems
    assert "shard-00001.safetensors: 3 response tokens, manifest says 9" in problems
    assert "sha256" not in problems.split("shard-00001")[1]  # re-hashed replacement matches


def test_missing_shard_is_named(tmp_path):
    build(tmp_path, make_records(8, top_k=5))
    (tmp_path / "shard-00001.safetensors").unlink()
    with pytest.raises(AlignDistilError, match="missing shard-00001.safetensors") as info:
        TeacherCache(tmp_path)
    assert info.value.hint
    assert any("shard-00001.safetensors: missing" in p for p in verify_teacher(tmp_path).problems)
    assert not is_complete(tmp_path, make_meta(), top_k=5)


def test_other_format_version_is_refused(tmp_path):
    build(tmp_path, make_records(3, top_k=5))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AlignDistilError, match="format version 2") as info:
        TeacherCache(tmp_path)
    assert "rebuild" in info.value.hint
    assert not verify_teacher(tmp_path).ok


def test_missing_manifest_says_interrupted(tmp_path):
    build(tmp_path, make_records(8, top_k=5), shards=[0], finalize=False)
    with pytest.raises(AlignDistilError, match="interrupted"):
        TeacherCache(tmp_path)


def test_check_tokenizer(tmp_path):
    build(tmp_path, make_records(3, top_k=5))
    cache = TeacherCache(tmp_path)
    check_tokenizer(cache, make_meta()["tokenizer_fingerprint"])
    with pytest.raises(AlignDistilError, match="another tokenizer than the student") as info:
        check_tokenizer(tmp_path, "something-else")
    assert "\n" not in str(info.value)


def test_check_compatible_and_is_complete(tmp_path):
    check_compatible(tmp_path / "nothing-yet", make_meta())
    writer = build(tmp_path, make_records(5, top_k=5))
    assert writer.is_complete()
    assert is_complete(tmp_path, make_meta(), top_k=5, cache_dtype="float32", vocab_size=VOCAB)
    with pytest.raises(AlignDistilError, match=r"teacher\.beta: cache has 0\.1, requested 0\.3") as info:
        check_compatible(tmp_path, make_meta(beta=0.3))
    assert "--overwrite" in info.value.hint
    with pytest.raises(AlignDistilError, match="top_k: cache has 5, requested 8"):
        is_complete(tmp_path, make_meta(), top_k=8)
    fingerprints = make_meta()
    fingerprints["model_fingerprints"]["dpo"] = "0" * 64
    with pytest.raises(AlignDistilError, match="model_fingerprints.dpo"):
        CacheWriter(tmp_path, meta=fingerprints, top_k=5, vocab_size=VOCAB,
                    cache_dtype="float32").is_complete()


@pytest.mark.parametrize("field", ["alpha", "topk_logprobs"])
def test_non_finite_values_abort_naming_the_example(tmp_path, field):
    records = make_records(4, top_k=5)
    getattr(records[2], field)[0] = float("nan")
    writer = CacheWriter(tmp_path, meta=make_meta(), top_k=5, vocab_size=VOCAB,
                         cache_dtype="float16", shard_size=4)
    writer.shard_plan(4)
    with pytest.raises(AlignDistilError, match=f"non-finite values for example 106 .*{field}"):
        writer.write_shard(0, records)
    assert not (tmp_path / "shard-00000.safetensors").exists()


def test_writer_rejects_malformed_records(tmp_path):
    writer = CacheWriter(tmp_path, meta=make_meta(), top_k=5, vocab_size=VOCAB,
                         cache_dtype="float32", shard_size=2, rank=0, world_size=2)
    writer.shard_plan(4)
    records = make_records(4, top_k=5)
    with pytest.raises(ValueError, match="does not own shard 1"):
        writer.write_shard(1, records[2:])
    records[0].alpha = records[0].alpha[:-1]  # one row short
    with pytest.raises(ValueError, match="alpha must have shape"):
        writer.write_shard(0, records[:2])


def test_two_ranks_equal_one_writer(tmp_path):
    records = make_records(13, top_k=4, seed=3)
    build(tmp_path / "single", records, top_k=4, dtype="float16", shard_size=3)
    shared = tmp_path / "shared"
    rank1 = build(shared, records, top_k=4, dtype="float16", shard_size=3, rank=1, world_size=2,
                  finalize=False)
    assert rank1.my_shards() == [1, 3]
    rank0 = build(shared, records, top_k=4, dtype="float16", shard_size=3, rank=0, world_size=2,
                  finalize=False)
    assert rank0.my_shards() == [0, 2, 4]
    rank0.finalize(collect_shard_infos(shared, 5), {"note": "test"})
    assert folder_bytes(shared) == folder_bytes(tmp_path / "single")


def test_manifest_that_skips_a_shard_fails_coverage(tmp_path):
    build(tmp_path, make_records(8, top_k=5, seed=2), shard_size=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["shards"][1]  # sequences 3..5 no longer covered
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    problems = "\n".join(verify_teacher(tmp_path).problems)
    assert "shard-00002.safetensors: does not cover sequences from 3" in problems
    assert "manifest counts 8 sequences, its shards list 5" in problems
