"""Sampling contract (EOS, determinism, order, vocabulary), greedy decoding, resumable JSONL."""

from __future__ import annotations

import json

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.generation import (
    decode,
    derive_seed,
    generate_to_jsonl,
    sample_responses,
    write_alpaca_eval,
)
from conftest import build_model

TEXTS = ["hi", "the movie was great and the acting was wonderful", "what is the capital",
         "awful", "I loved this story, a truly delightful experience and more"]


def encode(tokenizer, text: str) -> list[int]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                         add_generation_prompt=True, tokenize=False)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer, seed=0)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [encode(tokenizer, t) for t in TEXTS]


def test_every_response_ends_with_exactly_one_eos(model, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    out = sample_responses(model, tokenizer, prompts, max_new_tokens=12, samples_per_prompt=3,
                           batch_size=4, seed=3)
    assert len(out) == len(prompts) and all(len(samples) == 3 for samples in out)
    for samples in out:
        for r in samples:
            assert r[-1] == eos and r.count(eos) == 1
            assert 1 <= len(r) <= 13  # at most max_new_tokens generated, plus an appended EOS


def test_truncated_response_gets_eos_appended(tokenizer, prompts):
    """A model that never emits EOS: every response is max_new_tokens tokens + the EOS we append."""
    m = build_model(tokenizer, seed=1)
    m.lm_head.register_forward_hook(
        lambda mod, inp, out: out.index_fill(-1, torch.tensor([tokenizer.eos_token_id]), -1e9))
    out = sample_responses(m, tokenizer, prompts[:2], max_new_tokens=5, seed=0)
    for samples in out:
        assert samples[0][:-1] and len(samples[0]) == 6
        assert samples[0][-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in samples[0][:-1]


def test_cut_at_first_eos(tokenizer, prompts):
    """A model that always emits EOS: generation stops, the response is just [EOS]."""
    m = build_model(tokenizer, seed=1)
    eos = tokenizer.eos_token_id
    m.lm_head.register_forward_hook(
        lambda mod, inp, out: out.index_fill(-1, torch.tensor([eos]), 1e9))
    out = sample_responses(m, tokenizer, prompts, max_new_tokens=5, seed=0)
    assert all(samples == [[eos]] for samples in out)


def test_same_seed_same_outputs_different_seed_differs(model, tokenizer, prompts):
    kw = dict(max_new_tokens=10, samples_per_prompt=2, batch_size=3)
    a = sample_responses(model, tokenizer, prompts, seed=7, **kw)
    b = sample_responses(model, tokenizer, prompts, seed=7, **kw)
    c = sample_responses(model, tokenizer, prompts, seed=8, **kw)
    assert a == b
    assert a != c


def test_samples_of_one_prompt_differ_and_global_rng_untouched(model, tokenizer, prompts):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    out = sample_responses(model, tokenizer, prompts[:1], max_new_tokens=10,
                           samples_per_prompt=4, seed=0)
    assert torch.equal(before, torch.random.get_rng_state())
    assert len({tuple(r) for r in out[0]}) > 1


def test_order_restored_after_length_sorting(model, tokenizer, prompts):
    """Greedy responses do not depend on batching, so each prompt alone must give the same."""
    together = sample_responses(model, tokenizer, prompts, max_new_tokens=8, temperature=0,
                                batch_size=len(prompts))
    for p, got in zip(prompts, together):
        alone = sample_responses(model, tokenizer, [p], max_new_tokens=8, temperature=0)
        assert got == alone[0]


def test_vocab_size_suppresses_padded_head_rows(tokenizer, prompts):
    n = len(tokenizer)
    m = build_model(tokenizer, seed=2, vocab_size=n + 16)
    # Make the padded rows overwhelmingly likely: without suppression they would be sampled.
    m.lm_head.register_forward_hook(
        lambda mod, inp, out: out.index_fill(-1, torch.arange(n, n + 16), 50.0))
    out = sample_responses(m, tokenizer, prompts, max_new_tokens=8, samples_per_prompt=2,
                           vocab_size=n, seed=0)
    assert all(max(r) < n for samples in out for r in samples)
    unsuppressed = sample_responses(m, tokenizer, prompts[:1], max_new_tokens=3, seed=0)
    assert max(unsuppressed[0][0][:-1]) >= n  # the hook does push ids beyond the vocabulary


def manual_greedy(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt == eos:
                return out
    return out + [eos]


def test_temperature_zero_equals_manual_argmax_loop(model, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    out = sample_responses(model, tokenizer, prompts, max_new_tokens=10, temperature=0,
                           batch_size=2)
    for p, samples in zip(prompts, out):
        assert samples[0] == manual_greedy(model, p, 10, eos)


def test_no_top_k_and_model_generation_config_ignored(tokenizer, prompts):
    """HF's default top_k=50 and a folder's generation_config must not restrict sampling.

    The tiny random model's next-token distribution is close to uniform over ~300 ids, so 400
    one-token samples hit far more than 50 distinct ids unless something truncates to the top k.
    """
    m = build_model(tokenizer, seed=3)
    m.generation_config.top_k = 5
    m.generation_config.repetition_penalty = 3.0
    m.generation_config.suppress_tokens = list(range(10, len(tokenizer)))  # a field we never set
    out = sample_responses(m, tokenizer, prompts[:1], max_new_tokens=1, samples_per_prompt=400,
                           batch_size=400, seed=0)
    firsts = {r[0] for r in out[0]}
    assert len(firsts) > 100
    assert m.generation_config.top_k == 5  # the caller's model is left as it was


def test_top_p_restricts_support(tokenizer, prompts):
    m = build_model(tokenizer, seed=3)
    full = sample_responses(m, tokenizer, prompts[:1], max_new_tokens=1, samples_per_prompt=200,
                            batch_size=200, seed=0)
    nucleus = sample_responses(m, tokenizer, prompts[:1], max_new_tokens=1,
                               samples_per_prompt=200, batch_size=200, seed=0, top_p=0.05)
    assert len({r[0] for r in nucleus[0]}) < len({r[0] for r in full[0]}) / 2


def test_decode_drops_special_tokens(tokenizer):
    ids = tokenizer("great movie", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert decode(tokenizer, ids) == "great movie"


def test_derive_seed_is_stable():
    assert derive_seed(0, 0) == derive_seed(0, 0)
    assert len({derive_seed(s, k) for s in range(10) for k in range(10)}) == 100


def test_bad_arguments(model, tokenizer, prompts):
    with pytest.raises(ValueError):
        sample_responses(model, tokenizer, prompts, max_new_tokens=0)
    with pytest.raises(ValueError):
        sample_responses(model, tokenizer, prompts, max_new_tokens=2, top_p=0.0)
    with pytest.raises(AlignDistilError):
        sample_responses(model, tokenizer, [[]], max_new_tokens=2)


def _rows(tokenizer):
    return [(f"row-{i}", TEXTS[i % len(TEXTS)], encode(tokenizer, TEXTS[i % len(TEXTS)]))
            for i in range(7)]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_to_jsonl_resumes_without_duplicates(model, tokenizer, tmp_path):
    """Run, truncate the file mid-line, rerun: complete, no duplicates, same samples as before."""
    rows, out = _rows(tokenizer), tmp_path / "gen.jsonl"
    kw = dict(generator_name="tiny", max_new_tokens=6, samples_per_prompt=2, batch_size=3,
              seed=5, chunk_prompts=3)
    assert generate_to_jsonl(model, tokenizer, rows, out, **kw) == 14
    full = _read(out)
    assert {tuple(sorted(r)) for r in full} == {("generator", "prompt", "response", "row_id",
                                                 "sample")}
    lines = out.read_bytes().splitlines(keepends=True)
    # Chunks hold 3 rows x 2 samples = lines 0-5, 6-11, 12-13. Keep chunk 0, row-3 complete,
    # row-4 sample 0 and half of row-4 sample 1 (a torn line): chunk 1 is partly done.
    out.write_bytes(b"".join(lines[:9]) + lines[9][: len(lines[9]) // 2])
    written = generate_to_jsonl(model, tokenizer, rows, out, **kw)
    resumed = _read(out)
    assert written == 14 - 8  # rows 4 and 5 of chunk 1, then chunk 2
    key = lambda r: (r["row_id"], r["sample"])  # noqa: E731
    assert len({key(r) for r in resumed}) == len(resumed) == 14
    assert sorted(resumed, key=key) == sorted(full, key=key)  # resume equals uninterrupted
    assert generate_to_jsonl(model, tokenizer, rows, out, **kw) == 0  # nothing left to do


def test_generate_to_jsonl_refuses_other_settings(model, tokenizer, tmp_path):
    rows, out = _rows(tokenizer)[:2], tmp_path / "gen.jsonl"
    generate_to_jsonl(model, tokenizer, rows, out, generator_name="a", max_new_tokens=3,
                      samples_per_prompt=2)
    with pytest.raises(AlignDistilError):
        generate_to_jsonl(model, tokenizer, rows, out, generator_name="b", max_new_tokens=3,
                          samples_per_prompt=2)
    with pytest.raises(AlignDistilError):
        generate_to_jsonl(model, tokenizer, rows, out, generator_name="a", max_new_tokens=3,
                          samples_per_prompt=1)
    assert len(_read(out)) == 4  # nothing was deleted


def test_write_alpaca_eval_shape(tmp_path):
    records = [{"row_id": 1, "prompt": "Say hi", "response": "hi", "sample": 0,
                "generator": "tiny"},
               {"row_id": 2, "prompt": "Say bye", "response": "bye", "sample": 0,
                "generator": "tiny"}]
    path = tmp_path / "alpaca" / "outputs.json"
    write_alpaca_eval(records, path)
    data = json.loads(path.read_text())
    assert data == [{"instruction": "Say hi", "output": "hi", "generator": "tiny"},
                    {"instruction": "Say bye", "output": "bye", "generator": "tiny"}]
    assert [p.name for p in path.parent.iterdir()] == ["outputs.json"]  # no temporaries left
