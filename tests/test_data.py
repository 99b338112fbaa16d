"""Data loading, layouts, chat-template tokenization, truncation and validation."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import build_tokenizer

from aligndistil_cli.data import (ROW_ID_KEY, PairExample, Reason, ValidationReport,
                                  data_fingerprint, decode_response, encode_prompt, load_rows,
                                  normalize_row, prepare_pairs, prepare_prompts, prepare_responses,
                                  render_report)
from aligndistil_cli.errors import AlignDistilError

ROWS = [
    {"prompt": "what is the capital of France?", "chosen": "Paris is the capital.",
     "rejected": "a bad answer rambles on"},
    {"prompt": "the movie was", "chosen": "great and wonderful", "rejected": "terrible and dull"},
]
HH_PROMPT = "\n\nHuman: what is the capital?\n\nAssistant: Paris.\n\nHuman: sure?\n\nAssistant:"
HH_CHOSEN = HH_PROMPT + " yes"
HH_REJECTED = HH_PROMPT + " no"
SYSTEM = {"role": "system", "content": "be short"}


def msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def strip_ids(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != ROW_ID_KEY} for r in rows]


@pytest.fixture(scope="module")
def plain_tok():
    return build_tokenizer(chat_template=None)


@pytest.fixture(scope="module")
def bos_tok():
    """No chat template, and the tokenizer adds a BOS (<|endoftext|>) by itself."""
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer(chat_template=None)
    tok.bos_token = "<|endoftext|>"
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.bos_token_id)])
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    return tok


def template_ids(tok, messages, generation_prompt=False) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False,
                                   add_generation_prompt=generation_prompt)
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------- loading

def test_load_json_list_and_row_ids(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    rows = load_rows(str(path))
    assert strip_ids(rows) == ROWS
    assert [r[ROW_ID_KEY] for r in rows] == [0, 1]


@pytest.mark.parametrize("key", ["data", "test"])
def test_load_json_object_with_data_or_split_key(tmp_path, key):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({key: ROWS, "meta": 1}))
    assert strip_ids(load_rows(str(path), split="test")) == ROWS


def test_load_json_object_without_rows_lists_keys(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"validation": ROWS}))
    with pytest.raises(AlignDistilError, match="validation"):
        load_rows(str(path))


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    assert strip_ids(load_rows(str(path))) == ROWS


def test_malformed_jsonl_lists_line_numbers(tmp_path):
    lines = [json.dumps(ROWS[0]), "{oops", json.dumps(ROWS[1]), '{"prompt": "x",', ""]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(AlignDistilError) as info:
        load_rows(str(path))
    assert info.value.message == "data.jsonl: malformed JSON on line(s) 2, 4"
    assert info.value.exit_code == 2 and info.value.hint


def test_load_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert strip_ids(load_rows(str(path))) == ROWS


def test_load_csv(tmp_path):
    import csv

    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(ROWS)
    assert strip_ids(load_rows(str(path))) == ROWS


def test_load_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert strip_ids(load_rows(str(tmp_path / "one"))) == ROWS
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                               "test": datasets.Dataset.from_list(ROWS[1:])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert strip_ids(load_rows(str(tmp_path / "dict"), split="test")) == ROWS[1:]
    with pytest.raises(AlignDistilError, match=r"no split 'dev' \(available: test, train\)"):
        load_rows(str(tmp_path / "dict"), split="dev")


def test_load_folder_of_files_gzip_and_jsonl_named_json(tmp_path):
    import gzip

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    assert strip_ids(load_rows(str(folder), split="test")) == ROWS[1:]
    with pytest.raises(AlignDistilError, match="available: test, train"):
        load_rows(str(folder), split="dev")
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(json.dumps(ROWS[0]).encode()))
    assert strip_ids(load_rows(str(tmp_path / "d.jsonl.gz"))) == ROWS[:1]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in ROWS))
    assert strip_ids(load_rows(str(tmp_path / "lines.json"))) == ROWS


def test_missing_unreadable_and_unsupported_files(tmp_path):
    with pytest.raises(AlignDistilError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(AlignDistilError, match="not UTF-8"):
        load_rows(str(bad))
    pickle_file = tmp_path / "d.pkl"  # never unpickled: refused by type
    pickle_file.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(AlignDistilError, match="unsupported data file type"):
        load_rows(str(pickle_file))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(AlignDistilError, match="no rows"):
        load_rows(str(empty))


def test_hub_unreachable_is_one_line_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(AlignDistilError) as info:
        load_rows("someone/some-preferences")
    assert "unreachable" in info.value.message and "\n" not in info.value.message
    assert info.value.hint == "download it elsewhere and pass a local file/folder"


# ---------------------------------------------------------------------------------------- layouts

def test_layout_a_strings():
    conv = normalize_row(ROWS[0], "prompt", ["chosen", "rejected"])
    assert conv.prompt_messages == msgs(("user", ROWS[0]["prompt"]))
    assert conv.responses == [ROWS[0]["chosen"], ROWS[0]["rejected"]]
    assert conv.prompt_text == ROWS[0]["prompt"]


def test_layout_b_prompt_inside_message_lists():
    row = {"chosen": msgs(("system", "s"), ("user", "q"), ("assistant", "good")),
           "rejected": msgs(("system", "s"), ("user", "q"), ("assistant", "bad"))}
    conv = normalize_row(row, "prompt", ["chosen", "rejected"])
    assert conv.prompt_messages == msgs(("system", "s"), ("user", "q"))
    assert conv.responses == ["good", "bad"]


@pytest.mark.parametrize("prompt", [msgs(("user", "q")), "q"])
@pytest.mark.parametrize("as_lists", [True, False])
def test_layout_b_explicit_prompt(prompt, as_lists):
    chosen, rejected = "good", "bad"
    if as_lists:  # UltraFeedback keeps the prompt turn inside the responses too
        chosen = msgs(("user", "q"), ("assistant", "good"))
        rejected = msgs(("user", "q"), ("assistant", "bad"))
    conv = normalize_row({"prompt": prompt, "chosen": chosen, "rejected": rejected},
                         "prompt", ["chosen", "rejected"])
    assert conv.prompt_messages == msgs(("user", "q"))
    assert conv.responses == ["good", "bad"]


def test_layout_c_anthropic_hh():
    conv = normalize_row({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "prompt",
                         ["chosen", "rejected"])
    assert conv.prompt_messages == msgs(("user", "what is the capital?"), ("assistant", "Paris."),
                                        ("user", "sure?"))
    assert conv.responses == ["yes", "no"]
    assert conv.prompt_text.endswith("\n\nHuman: sure?\n\nAssistant:")


def test_hh_prompt_string_is_parsed_into_turns():
    row = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go"}
    conv = normalize_row(row, "prompt", ["chosen", "rejected"])
    assert conv.prompt_messages == msgs(("user", "hi"))
    assert conv.responses == ["hello", "go"]


def test_custom_keys(tokenizer):
    rows = [{"question": "q one", "good": "the good answer", "bad": "the bad answer"}]
    pairs, report = prepare_pairs(rows, tokenizer, prompt_key="question", chosen_key="good",
                                  rejected_key="bad")
    assert report.ok and len(pairs) == 1
    assert decode_response(tokenizer, pairs[0].chosen_ids) == "the good answer"
    with pytest.raises(AlignDistilError, match="missing field"):
        prepare_pairs(rows, tokenizer)  # default keys do not exist in this file


# ------------------------------------------------------------------------------ chat-template path

def test_template_split_prompt_is_prefix_and_one_eos(tokenizer):
    prompt = [SYSTEM, {"role": "user", "content": "what is the capital?"}]
    rows = [{"prompt": prompt, "chosen": "Paris.", "rejected": "London."}]
    (pair,), report = prepare_pairs(rows, tokenizer)
    assert report.reasons == {}
    eos = tokenizer.eos_token_id
    full = template_ids(tokenizer, prompt + msgs(("assistant", "Paris.")))
    assert pair.prompt_ids == template_ids(tokenizer, prompt, generation_prompt=True)
    # the whole conversation, minus only what ChatML adds after the EOS ("\n")
    assert full[: len(pair.prompt_ids) + len(pair.chosen_ids)] == pair.prompt_ids + pair.chosen_ids
    assert tokenizer.decode(full[len(pair.prompt_ids) + len(pair.chosen_ids):]) == "\n"
    for ids in (pair.chosen_ids, pair.rejected_ids):
        assert ids[-1] == eos and ids.count(eos) == 1
    text = tokenizer.decode(pair.prompt_ids + pair.chosen_ids)
    assert text.count("<|im_start|>system") == 1 and text.count("be short") == 1
    assert pair.prompt_ids == encode_prompt(tokenizer, prompt)


def test_template_default_system_prompt_not_duplicated():
    """Qwen-style templates insert a default system turn; it must appear once per sequence."""
    qwen_like = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nDEFAULT<|im_end|>\n"
                 "{% endif %}" + build_tokenizer.__defaults__[0])
    tok = build_tokenizer(chat_template=qwen_like)
    (pair,), _ = prepare_pairs([ROWS[0]], tok)
    text = tok.decode(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids)
    assert text.count("DEFAULT") == 1


def test_template_without_eos_gets_one_appended():
    tok = build_tokenizer(chat_template="{% for m in messages %}[{{ m['role'] }}]\n"
                                        "{{ m['content'] }}\n{% endfor %}"
                                        "{% if add_generation_prompt %}[assistant]\n{% endif %}")
    (pair,), report = prepare_pairs([ROWS[0]], tok)
    assert pair.chosen_ids[-1] == tok.eos_token_id and pair.chosen_ids.count(tok.eos_token_id) == 1
    assert Reason.NOT_A_PREFIX not in report.reasons


def test_template_not_a_prefix_falls_back_and_notes_it():
    # Marks the conversation differently when it ends with an assistant turn.
    odd = ("{% if not add_generation_prompt %}<|im_start|>{% endif %}"
           "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
           "{% if add_generation_prompt %}assistant: {% endif %}")
    tok = build_tokenizer(chat_template=odd)
    (pair,), report = prepare_pairs([ROWS[0]], tok)
    assert report.reasons[Reason.NOT_A_PREFIX].row_ids == [0] and report.ok
    assert pair.prompt_ids == encode_prompt(tok, ROWS[0]["prompt"])
    assert pair.chosen_ids == tok(ROWS[0]["chosen"], add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id]


def test_response_with_literal_eos_text_keeps_one_eos(tokenizer):
    rows = [{"prompt": "q", "chosen": "yes<|im_end|>", "rejected": "no"}]
    (pair,), _ = prepare_pairs(rows, tokenizer)
    assert pair.chosen_ids.count(tokenizer.eos_token_id) == 1


def test_encode_prompt_ends_with_generation_prompt(tokenizer):
    ids = encode_prompt(tokenizer, "hi there")
    tail = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(tail):] == tail
    assert ids == encode_prompt(tokenizer, msgs(("user", "hi there")))
    with pytest.raises(AlignDistilError):
        encode_prompt(tokenizer, "   ")


def test_decode_response_strips_eos_and_after(tokenizer):
    ids = tokenizer("Paris.", add_special_tokens=False)["input_ids"]
    junk = tokenizer("the film", add_special_tokens=False)["input_ids"]
    assert decode_response(tokenizer, ids + [tokenizer.eos_token_id] + junk) == "Paris."
    import torch

    assert decode_response(tokenizer, torch.tensor(ids + [tokenizer.pad_token_id])) == "Paris."


# ------------------------------------------------------------------------------ no-template path

def test_no_template_plain_text(plain_tok):
    (pair,), _ = prepare_pairs([ROWS[0]], plain_tok)
    ids = lambda s: plain_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert pair.prompt_ids == ids(ROWS[0]["prompt"])
    assert pair.chosen_ids == ids(ROWS[0]["chosen"]) + [plain_tok.eos_token_id]


def test_no_template_hh_keeps_transcript_text(plain_tok):
    (pair,), _ = prepare_pairs([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], plain_tok)
    assert plain_tok.decode(pair.prompt_ids) == HH_PROMPT
    assert plain_tok.decode(pair.chosen_ids) == " yes<|im_end|>"
    assert plain_tok.decode(pair.prompt_ids + pair.chosen_ids) == HH_CHOSEN + "<|im_end|>"


def test_no_template_bos_only_once(bos_tok):
    (pair,), _ = prepare_pairs([ROWS[0]], bos_tok)
    seq = pair.prompt_ids + pair.chosen_ids
    assert seq[0] == bos_tok.bos_token_id and seq.count(bos_tok.bos_token_id) == 1
    assert pair.chosen_ids.count(bos_tok.eos_token_id) == 1
    assert encode_prompt(bos_tok, ROWS[0]["prompt"]) == pair.prompt_ids


# ------------------------------------------------------------------------------------- truncation

def test_truncation_directions(tokenizer):
    row = {"prompt": "the movie was great and the acting was wonderful " * 3,
           "chosen": "I loved this story, a truly delightful experience",
           "rejected": "what a waste of time, awful and dull"}
    (full,), _ = prepare_pairs([row], tokenizer)
    (cut,), report = prepare_pairs([row], tokenizer, max_prompt_length=10, max_length=14)
    assert cut.prompt_ids == full.prompt_ids[-10:]  # prompt cut from the LEFT
    assert cut.chosen_ids == full.chosen_ids[:4]  # response cut from the RIGHT
    assert cut.rejected_ids == full.rejected_ids[:4]
    assert tokenizer.eos_token_id not in cut.chosen_ids  # a cut response keeps no EOS
    assert report.reasons[Reason.PROMPT_TOO_LONG].row_ids == [0]
    assert report.reasons[Reason.RESPONSE_TRUNCATED].count == 1
    assert report.ok and report.n_kept == 1


def test_short_rows_are_not_truncated(tokenizer):
    (pair,), report = prepare_pairs([ROWS[0]], tokenizer, max_length=500, max_prompt_length=200)
    assert report.reasons == {} and pair.chosen_ids[-1] == tokenizer.eos_token_id


def test_prompt_filling_max_length_is_dropped(tokenizer):
    """Policy: a long prompt is left-cut and kept, unless it alone fills max_length."""
    n_prompt = len(encode_prompt(tokenizer, ROWS[0]["prompt"]))
    kept, report = prepare_pairs([ROWS[0]], tokenizer, max_prompt_length=n_prompt - 1,
                                 max_length=n_prompt)
    assert len(kept) == 1 and Reason.PROMPT_TOO_LONG in report.notes
    assert len(kept[0].chosen_ids) == 1
    with pytest.raises(AlignDistilError, match="no room for the response"):
        prepare_pairs([ROWS[0]], tokenizer, max_length=n_prompt)
    with pytest.raises(AlignDistilError, match="positive integer"):
        prepare_pairs([ROWS[0]], tokenizer, max_length=0)


# ------------------------------------------------------------------------------------- validation

BAD_ROWS = {
    Reason.MISSING_FIELD: {"prompt": "q", "chosen": "a"},
    Reason.NOT_STRING: {"prompt": "q", "chosen": 3, "rejected": "b"},
    Reason.EMPTY_PROMPT: {"prompt": "  ", "chosen": "a", "rejected": "b"},
    Reason.EMPTY_RESPONSE: {"prompt": "q", "chosen": "\n ", "rejected": "b"},
    Reason.IDENTICAL: {"prompt": "q", "chosen": "same", "rejected": " same "},
    Reason.MALFORMED: {"prompt": "q", "chosen": [["nested"]], "rejected": "b"},
}


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_each_reason_is_reported(tokenizer, reason):
    rows = [ROWS[0], BAD_ROWS[reason]]
    pairs, report = prepare_pairs(rows, tokenizer, on_invalid="skip")
    assert [p.row_id for p in pairs] == [0]
    assert report.dropped == {str(reason): report.reasons[reason]}
    assert report.reasons[reason].row_ids == [1] and report.n_dropped == 1


def test_identical_after_truncation(tokenizer):
    good = {"prompt": "q", "chosen": "I loved it", "rejected": "what a waste"}
    row = {"prompt": "q", "chosen": "the film was great", "rejected": "the film was terrible"}
    n_prompt = len(encode_prompt(tokenizer, "q"))
    pairs, report = prepare_pairs([good, row], tokenizer, max_length=n_prompt + 2,
                                  on_invalid="skip")
    assert [p.row_id for p in pairs] == [0]
    assert report.reasons[Reason.IDENTICAL_AFTER_TRUNCATION].row_ids == [1]


JUNK = [None, 5, "text", [1, 2], {}, {"prompt": None, "chosen": None, "rejected": None},
        {"prompt": {"x": 1}, "chosen": "a", "rejected": "b"},
        {"prompt": [1, 2], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": None}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": ["x"]}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": 7, "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": [], "chosen": "a", "rejected": "b"},
        {"chosen": "no transcript", "rejected": "here"},
        {"chosen": msgs(("user", "q")), "rejected": msgs(("user", "q"))},
        {"chosen": msgs(("user", "q"), ("assistant", "a")), "rejected": "b"},
        {"chosen": [], "rejected": []},
        {"prompt": "q", "chosen": msgs(("user", "a")), "rejected": "b"},
        {"prompt": "q", "chosen": 1.5, "rejected": True}]


def test_junk_rows_never_crash(tokenizer, plain_tok):
    for tok in (tokenizer, plain_tok):
        pairs, report = prepare_pairs([ROWS[0], *JUNK], tok, on_invalid="skip")
        assert [p.row_id for p in pairs] == [0]
        assert report.n_dropped == len(JUNK)
        assert sum(v.count for v in report.dropped.values()) == len(JUNK)
        prompts, _ = prepare_prompts([ROWS[0], *JUNK], tok, on_invalid="skip")
        responses, _ = prepare_responses([{"prompt": "q", "response": "a"}, *JUNK], tok,
                                         on_invalid="skip")
        assert prompts[0].row_id == 0 and responses[0].row_id == 0


def test_on_invalid_error_lists_reasons_and_rows(tokenizer):
    rows = [ROWS[0], BAD_ROWS[Reason.EMPTY_RESPONSE], BAD_ROWS[Reason.IDENTICAL], ROWS[1]]
    with pytest.raises(AlignDistilError) as info:
        prepare_pairs(rows, tokenizer, on_invalid="error")
    err = info.value
    assert err.exit_code == 2 and "--on-invalid skip" in err.hint
    assert "2 of 4 rows" in err.message and "empty response: 1 (row 1)" in err.message
    assert "chosen identical to rejected: 1 (row 2)" in err.message
    assert isinstance(err.report, ValidationReport) and err.report.n_kept == 2


def test_on_invalid_skip_warns(tokenizer, caplog):
    rows = [ROWS[0], BAD_ROWS[Reason.EMPTY_PROMPT]]
    with caplog.at_level(logging.WARNING, logger="aligndistil"):
        pairs, report = prepare_pairs(rows, tokenizer, on_invalid="skip")
    assert len(pairs) == 1 and "dropped 1 of 2 rows" in caplog.text
    assert "empty prompt" in caplog.text


def test_skip_still_fails_when_nothing_is_left_or_too_much_dropped(tokenizer):
    with pytest.raises(AlignDistilError, match="no valid rows"):
        prepare_pairs([BAD_ROWS[Reason.EMPTY_PROMPT]], tokenizer, on_invalid="skip")
    rows = [ROWS[0], BAD_ROWS[Reason.EMPTY_PROMPT]]
    with pytest.raises(AlignDistilError, match="more than the allowed 10%"):
        prepare_pairs(rows, tokenizer, on_invalid="skip", max_drop_fraction=0.1)
    with pytest.raises(AlignDistilError, match="on_invalid"):
        prepare_pairs(rows, tokenizer, on_invalid="ignore")


def test_row_ids_come_from_the_file_and_report_caps_ids(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    bad = BAD_ROWS[Reason.EMPTY_RESPONSE]
    path.write_text("\n".join(json.dumps(r) for r in [ROWS[0]] + [bad] * 7 + [ROWS[1]]))
    rows = load_rows(str(path))
    pairs, report = prepare_pairs(rows[::-1], tokenizer, on_invalid="skip")
    assert sorted(p.row_id for p in pairs) == [0, 8]
    entry = report.reasons[Reason.EMPTY_RESPONSE]
    assert entry.count == 7 and entry.row_ids == [7, 6, 5, 4, 3]
    assert "..." in report.summary()


def test_duplicates_are_noted_and_kept(tokenizer):
    pairs, report = prepare_pairs([ROWS[0], ROWS[1], ROWS[0]], tokenizer)
    assert len(pairs) == 3 and report.reasons[Reason.DUPLICATE].row_ids == [2] and report.ok


def test_render_report_table(tokenizer):
    from rich.console import Console

    _, report = prepare_pairs([ROWS[0], BAD_ROWS[Reason.IDENTICAL], ROWS[0]], tokenizer,
                              on_invalid="skip")
    console = Console(record=True, width=140)
    console.print(render_report(report))
    text = console.export_text()
    assert "2 of 3 rows kept" in text and "chosen identical to rejected" in text
    assert "duplicate example" in text and "dropped" in text
    assert json.loads(json.dumps(report.to_dict()))["n_dropped"] == 1
    console = Console(record=True, width=140)
    console.print(render_report(ValidationReport(n_rows=1, n_kept=1)))
    assert "all rows valid" in console.export_text()


# ------------------------------------------------------------------------- prompts and responses

def test_prepare_prompts_from_prompt_only_and_preference_files(tokenizer):
    rows = [{"prompt": "hi there"}, {"prompt": [SYSTEM, {"role": "user", "content": "q"}]},
            {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}]
    prompts, report = prepare_prompts(rows, tokenizer)
    assert report.ok and [p.row_id for p in prompts] == [0, 1, 2]
    assert prompts[0].prompt_ids == encode_prompt(tokenizer, "hi there")
    assert prompts[0].prompt_text == "hi there"
    assert prompts[1].prompt_messages[0] == SYSTEM
    assert prompts[2].prompt_messages[-1] == {"role": "user", "content": "sure?"}
    cut, report = prepare_prompts(rows, tokenizer, max_prompt_length=5)
    assert all(len(p.prompt_ids) == 5 for p in cut)
    assert cut[0].prompt_ids == prompts[0].prompt_ids[-5:]
    assert report.reasons[Reason.PROMPT_TOO_LONG].count == 3


def test_prepare_responses_generation_file(tokenizer):
    rows = [{"prompt": "q", "response": "Paris."}, {"prompt": msgs(("user", "q")), "output": "x"},
            {"prompt": "q", "response": ""}]
    examples, report = prepare_responses(rows, tokenizer, on_invalid="skip", max_length=100)
    assert [e.row_id for e in examples] == [0, 1]
    assert examples[0].response_ids[-1] == tokenizer.eos_token_id
    assert decode_response(tokenizer, examples[0].response_ids) == "Paris."
    assert examples[0].prompt_ids == examples[1].prompt_ids == encode_prompt(tokenizer, "q")
    assert report.reasons[Reason.EMPTY_RESPONSE].row_ids == [2]
    assert isinstance(prepare_pairs([ROWS[0]], tokenizer)[0][0], PairExample)


# ------------------------------------------------------------------------------------ fingerprint

def test_fingerprint_stable_and_sensitive():
    base = data_fingerprint(ROWS, max_length=512, template="chatml")
    reordered_keys = [dict(reversed(list(r.items()))) for r in ROWS]
    assert base == data_fingerprint(reordered_keys, template="chatml", max_length=512)
    assert len(base) == 64 and int(base, 16) >= 0
    changed = [dict(ROWS[0], chosen="Paris."), ROWS[1]]
    assert data_fingerprint(changed, max_length=512, template="chatml") != base
    assert data_fingerprint(ROWS, max_length=256, template="chatml") != base
    assert data_fingerprint(ROWS[::-1], max_length=512, template="chatml") != base
    assert data_fingerprint(ROWS[:1], max_length=512, template="chatml") != base
    assert data_fingerprint([{"b": b"\x00", "x": 1.5}]) == data_fingerprint([{"x": 1.5,
                                                                               "b": b"\x00"}])
