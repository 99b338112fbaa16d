"""From raw rows to token-id examples, with every row validated before any training starts.

Order per row: normalise the layout -> check texts -> tokenize -> truncate -> check ids. A bad row
raises :class:`InvalidRow` inside, which is counted in the :class:`ValidationReport`; the
``on_invalid`` policy is applied once all rows are seen, so the error lists every problem at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from aligndistil_cli.data.layouts import Conversation, normalize_prompt, normalize_row
from aligndistil_cli.data.loading import ROW_ID_KEY
from aligndistil_cli.data.report import (InvalidRow, Reason, ValidationReport, apply_policy,
                                         check_on_invalid)
from aligndistil_cli.data.tokenize import (eos_id, prompt_ids_for, response_ids_for,
                                           truncate)
from aligndistil_cli.errors import AlignDistilError


@dataclass
class PairExample:
    """One preference pair; ``chosen_ids``/``rejected_ids`` are responses only (no prompt)."""

    row_id: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class PromptExample:
    """One prompt for sampling.

    ``prompt_text`` is the prompt as the user gave it when it was a string, else its plain-text
    rendering; ``prompt_messages`` are its turns (write these back next to generated responses
    so that re-templating reproduces the same prompt ids).
    """

    row_id: int
    prompt_ids: list[int]
    prompt_text: str
    prompt_messages: list[dict] = field(default_factory=list)


@dataclass
class ResponseExample:
    """One (prompt, response) pair from a generations file; ``response_ids`` ends with EOS."""

    row_id: int
    prompt_ids: list[int]
    response_ids: list[int]


def _row_id(row: Any, index: int) -> int:
    value = row.get(ROW_ID_KEY) if isinstance(row, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else index


def _check_limits(max_length: int | None, max_prompt_length: int | None) -> None:
    for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise AlignDistilError(f"{name} must be a positive integer, got {value!r}",
                                   f"pass --{name.replace('_', '-')} 1 or more")


def _run(rows: Sequence[Any], build: Callable[[Any], tuple[Any, set[Reason]]], on_invalid: str,
         what: str, max_drop_fraction: float | None) -> tuple[list, ValidationReport]:
    """Apply ``build(row) -> (example without id, notes)`` to each row, collecting the report."""
    check_on_invalid(on_invalid)
    report = ValidationReport(n_rows=len(rows))
    examples, seen = [], set()
    for index, row in enumerate(rows):
        row_id = _row_id(row, index)
        try:
            example, notes = build(row)
        except InvalidRow as exc:
            report.add(exc.reason, row_id)
            continue
        key = hashlib.sha256(json.dumps(example).encode()).digest()  # 32 B/row, not the ids
        if key in seen:
            notes.add(Reason.DUPLICATE)
        seen.add(key)
        for note in sorted(notes):
            report.add(note, row_id)
        examples.append((row_id, example))
    report.n_kept = len(examples)
    apply_policy(report, on_invalid, what, max_drop_fraction)
    return examples, report


def prepare_pairs(rows: Sequence[Any], tokenizer: Any, *, prompt_key: str = "prompt",
                  chosen_key: str = "chosen", rejected_key: str = "rejected",
                  max_length: int | None = None, max_prompt_length: int | None = None,
                  on_invalid: str = "error", max_drop_fraction: float | None = None
                  ) -> tuple[list[PairExample], ValidationReport]:
    """Validate and tokenize preference rows (any layout of :mod:`layouts`).

    Drops (or, with ``on_invalid="error"``, raises :class:`AlignDistilError` for) rows with a
    missing field, non-string content, empty prompt/response, chosen == rejected as text or as
    ids after truncation, or a prompt that fills ``max_length``. See :func:`truncate` for cuts.
    """
    _check_limits(max_length, max_prompt_length)
    eos_id(tokenizer)  # fail once, up front, rather than once per row

    def build(row: Any) -> tuple[list[list[int]], set[Reason]]:
        conv = normalize_row(row, prompt_key, [chosen_key, rejected_key])
        if conv.responses[0].strip() == conv.responses[1].strip():
            raise InvalidRow(Reason.IDENTICAL)
        prompt, responses, notes = _encode(tokenizer, conv, max_length, max_prompt_length)
        if responses[0] == responses[1]:
            raise InvalidRow(Reason.IDENTICAL_AFTER_TRUNCATION)
        return [prompt, *responses], notes

    examples, report = _run(rows, build, on_invalid, "the preference data", max_drop_fraction)
    return [PairExample(rid, p, c, r) for rid, (p, c, r) in examples], report


def prepare_responses(rows: Sequence[Any], tokenizer: Any, *, prompt_key: str = "prompt",
                      response_key: str = "response", max_length: int | None = None,
                      max_prompt_length: int | None = None, on_invalid: str = "error",
                      max_drop_fraction: float | None = None
                      ) -> tuple[list[ResponseExample], ValidationReport]:
    """Validate and tokenize a generations file: ``prompt`` + ``response`` rows.

    A row without ``response_key`` but with ``"output"`` uses that (common generation dumps).
    """
    _check_limits(max_length, max_prompt_length)
    eos_id(tokenizer)

    def build(row: Any) -> tuple[list[list[int]], set[Reason]]:
        key = response_key
        if isinstance(row, dict) and row.get(key) is None and row.get("output") is not None:
            key = "output"
        conv = normalize_row(row, prompt_key, [key])
        prompt, responses, notes = _encode(tokenizer, conv, max_length, max_prompt_length)
        return [prompt, responses[0]], notes

    examples, report = _run(rows, build, on_invalid, "the generations", max_drop_fraction)
    return [ResponseExample(rid, p, r) for rid, (p, r) in examples], report


def prepare_prompts(rows: Sequence[Any], tokenizer: Any, *, prompt_key: str = "prompt",
                    max_prompt_length: int | None = None, chosen_key: str = "chosen",
                    rejected_key: str = "rejected", on_invalid: str = "error",
                    max_drop_fraction: float | None = None
                    ) -> tuple[list[PromptExample], ValidationReport]:
    """Prompts for sampling, from prompt-only rows or from preference rows (their prompt turns).

    Over-long prompts are cut from the left (noted, kept).
    """
    _check_limits(None, max_prompt_length)

    def build(row: Any) -> tuple[tuple[list[int], str, list[dict]], set[Reason]]:
        if isinstance(row, dict) and row.get(prompt_key) is not None:
            messages, text, sep = normalize_prompt(row[prompt_key], prompt_key)
            conv = Conversation(messages, text, sep, [])
        else:  # a preference file without a prompt column: take the shared turns
            conv = normalize_row(row, prompt_key, [chosen_key, rejected_key])
        prompt, _, notes = truncate(prompt_ids_for(tokenizer, conv), [], None, max_prompt_length)
        return (prompt, conv.prompt_text, conv.prompt_messages), notes

    examples, report = _run(rows, build, on_invalid, "the prompts", max_drop_fraction)
    return [PromptExample(rid, p, t, m) for rid, (p, t, m) in examples], report


def _encode(tokenizer: Any, conv: Conversation, max_length: int | None,
            max_prompt_length: int | None) -> tuple[list[int], list[list[int]], set[Reason]]:
    """Tokenize a conversation's prompt and responses, then truncate."""
    prompt = prompt_ids_for(tokenizer, conv)
    responses, notes = [], set()
    for text in conv.responses:
        ids, is_prefix = response_ids_for(tokenizer, conv, text, prompt)
        if not is_prefix:
            notes.add(Reason.NOT_A_PREFIX)
        responses.append(ids)
    prompt, responses, cut_notes = truncate(prompt, responses, max_length, max_prompt_length)
    return prompt, responses, notes | cut_notes


def _canonical(value: Any) -> Any:
    """JSON has no bytes/datetime/numpy: give them a stable text form instead of failing."""
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def data_fingerprint(rows: Sequence[Any], **settings: Any) -> str:
    """sha256 over the canonical JSON of every row and the settings (key order does not matter).

    Two runs get the same fingerprint exactly when they read the same rows (including row ids)
    with the same settings, so caches keyed by it are safe to reuse.
    """
    digest = hashlib.sha256()

    def feed(obj: Any) -> None:
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=_canonical)
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")

    feed({"settings": settings, "n_rows": len(rows)})
    for row in rows:
        feed(row)
    return digest.hexdigest()
