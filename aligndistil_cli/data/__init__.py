"""Preference, prompt and generation data: loading, layouts, tokenization, validation.

Typical use::

    rows = load_rows("data.jsonl")
    pairs, report = prepare_pairs(rows, tokenizer, max_length=1024, max_prompt_length=512,
                                  on_invalid="skip")
    console.print(render_report(report))

Modules: :mod:`.loading` (files, folders, hub), :mod:`.layouts` (row layouts -> conversations),
:mod:`.tokenize` (chat templates, EOS, truncation), :mod:`.report` (reasons and policy),
:mod:`.prepare` (the ``prepare_*`` entry points and the data fingerprint).
"""

from aligndistil_cli.data.layouts import Conversation, normalize_row
from aligndistil_cli.data.loading import ROW_ID_KEY, load_rows
from aligndistil_cli.data.prepare import (PairExample, PromptExample, ResponseExample,
                                          data_fingerprint, prepare_pairs, prepare_prompts,
                                          prepare_responses)
from aligndistil_cli.data.report import Reason, ReasonCount, ValidationReport, render_report
from aligndistil_cli.data.tokenize import decode_response, encode_prompt

__all__ = [
    "ROW_ID_KEY", "Conversation", "PairExample", "PromptExample", "Reason", "ReasonCount",
    "ResponseExample", "ValidationReport", "data_fingerprint", "decode_response", "encode_prompt",
    "load_rows", "normalize_row", "prepare_pairs", "prepare_prompts", "prepare_responses",
    "render_report",
]
