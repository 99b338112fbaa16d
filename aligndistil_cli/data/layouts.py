"""Normalising the row layouts people ship preference data in.

Every layout becomes a :class:`Conversation`: the prompt as chat messages (for chat templates), the
prompt as plain text (for tokenizers without one), and the final assistant response texts.

Layouts (keys are configurable):

(a) ``prompt``/``chosen``/``rejected`` strings;
(b) conversational: ``chosen``/``rejected`` message lists that include the prompt turns (the
    UltraFeedback-binarized layout: the shared leading turns are the prompt, the last assistant
    message is the response), or an explicit ``prompt`` (message list or string) with responses as
    message lists (last assistant message is used; the explicit prompt wins over any turns in
    them) or strings;
(c) Anthropic-HH plain text: ``chosen``/``rejected`` strings of ``"\\n\\nHuman: ...\\n\\nAssistant:
    ..."`` turns; the prompt is their longest common prefix cut after its last
    ``"\\n\\nAssistant:"`` (what TRL's ``extract_prompt`` does). An explicit HH-style prompt string
    is parsed into turns too.

Bad rows raise :class:`InvalidRow` with a reason; nothing here raises anything else on junk input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from aligndistil_cli.data.report import InvalidRow, Reason

ROLES = ("system", "user", "assistant", "tool")
HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
ASSISTANT_TAG = "\n\nAssistant:"


@dataclass
class Conversation:
    """One normalised row.

    Attributes:
        prompt_messages: the prompt turns, ``[{"role", "content"}]``, ending with a non-assistant
            turn.
        prompt_text: the prompt as plain text, used when the tokenizer has no chat template (the
            original string for layouts (a)/(c), HH-style turns for message lists).
        separator: text placed between ``prompt_text`` and a response in the plain-text path
            (``" "`` after ``"Assistant:"``, nothing for plain prompt strings).
        responses: the final assistant texts, in the order of the response keys.
    """

    prompt_messages: list[dict]
    prompt_text: str
    separator: str
    responses: list[str]


def normalize_row(row: Any, prompt_key: str, response_keys: Sequence[str]) -> Conversation:
    """Turn one raw row into a :class:`Conversation` (raises :class:`InvalidRow`)."""
    if not isinstance(row, dict):
        raise InvalidRow(Reason.MALFORMED, f"row is a {type(row).__name__}, not an object")
    raw = [_required(row, key) for key in response_keys]
    prompt = row.get(prompt_key)
    if prompt is not None:
        messages, text, sep = normalize_prompt(prompt, prompt_key)
        responses = [_response_text(value, key) for value, key in zip(raw, response_keys)]
        if sep:  # turn-based prompts: surrounding whitespace of a response is formatting
            responses = [r.strip() for r in responses]
    elif raw and all(isinstance(v, str) for v in raw):
        messages, text, sep, responses = _split_hh(raw, prompt_key)
    elif raw and all(isinstance(v, list) for v in raw):
        messages, text, sep, responses = _split_message_lists(raw, response_keys)
    elif not raw:
        raise InvalidRow(Reason.MISSING_FIELD, f"'{prompt_key}'")
    else:
        raise InvalidRow(Reason.MALFORMED, "responses mix strings and message lists and there "
                                           f"is no '{prompt_key}'")
    for response in responses:
        if not response.strip():
            raise InvalidRow(Reason.EMPTY_RESPONSE)
    return Conversation(messages, text, sep, responses)


def normalize_prompt(prompt: Any, key: str = "prompt") -> tuple[list[dict], str, str]:
    """A prompt string or message list -> (messages, plain text, separator)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRow(Reason.EMPTY_PROMPT)
        if is_hh_prompt(prompt):
            return parse_hh(prompt), prompt, " "
        return [{"role": "user", "content": prompt}], prompt, ""
    if isinstance(prompt, list):
        messages = check_messages(prompt, key)
        if not messages or not any(m["content"].strip() for m in messages):
            raise InvalidRow(Reason.EMPTY_PROMPT)
        if messages[-1]["role"] == "assistant":
            raise InvalidRow(Reason.MALFORMED, f"'{key}' ends with an assistant message")
        return messages, render_plain(messages), " "
    raise InvalidRow(Reason.NOT_STRING, f"'{key}' is a {type(prompt).__name__}")


def _required(row: dict, key: str) -> Any:
    value = row.get(key)
    if value is None:
        raise InvalidRow(Reason.MISSING_FIELD, f"'{key}'")
    if not isinstance(value, (str, list)):
        raise InvalidRow(Reason.NOT_STRING, f"'{key}' is a {type(value).__name__}")
    return value


def check_messages(value: Any, key: str) -> list[dict]:
    """Validate a message list; returns clean ``{"role", "content"}`` copies."""
    if not isinstance(value, list):
        raise InvalidRow(Reason.NOT_STRING, f"'{key}' is a {type(value).__name__}")
    clean = []
    for message in value:
        if not isinstance(message, dict):
            raise InvalidRow(Reason.MALFORMED, f"'{key}' holds a {type(message).__name__}, "
                                               "not a {role, content} message")
        if message.get("role") is None or message.get("content") is None:
            raise InvalidRow(Reason.MISSING_FIELD, f"a message in '{key}' lacks role or content")
        if message["role"] not in ROLES:
            raise InvalidRow(Reason.MALFORMED, f"unknown role {message['role']!r} in '{key}'")
        if not isinstance(message["content"], str):
            raise InvalidRow(Reason.NOT_STRING, f"message content in '{key}' is a "
                                                f"{type(message['content']).__name__}")
        clean.append({"role": message["role"], "content": message["content"]})
    return clean


def _response_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    messages = check_messages(value, key)
    if not messages:
        raise InvalidRow(Reason.EMPTY_RESPONSE)
    if messages[-1]["role"] != "assistant":
        raise InvalidRow(Reason.MALFORMED, f"'{key}' does not end with an assistant message")
    return messages[-1]["content"]


def _split_message_lists(raw: list[list], keys: Sequence[str]
                         ) -> tuple[list[dict], str, str, list[str]]:
    """Layout (b) without a prompt: the shared leading turns are the prompt."""
    lists = [check_messages(v, k) for v, k in zip(raw, keys)]
    if any(not m for m in lists):
        raise InvalidRow(Reason.EMPTY_RESPONSE)
    shared = 0
    limit = min(len(m) for m in lists) - 1  # at least the last message is a response
    while shared < limit and all(m[shared] == lists[0][shared] for m in lists):
        shared += 1
    prompt = lists[0][:shared]
    for messages in lists:
        rest = messages[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise InvalidRow(Reason.MALFORMED, "the responses differ before their last turn or "
                                               "do not end with one assistant message")
    if not prompt or prompt[-1]["role"] == "assistant":
        raise InvalidRow(Reason.EMPTY_PROMPT if not prompt else Reason.MALFORMED,
                         "no user turn before the responses")
    if not any(m["content"].strip() for m in prompt):
        raise InvalidRow(Reason.EMPTY_PROMPT)
    return prompt, render_plain(prompt), " ", [m[-1]["content"] for m in lists]


def _split_hh(raw: list[str], prompt_key: str) -> tuple[list[dict], str, str, list[str]]:
    """Layout (c): prompt = common prefix of the texts, cut after its last "Assistant:" tag."""
    common = _common_prefix(raw)
    end = _last_assistant_tag_end(common)
    if end is None:
        raise InvalidRow(Reason.MISSING_FIELD, f"'{prompt_key}' (and the responses are not "
                                               "Human:/Assistant: transcripts)")
    prompt_text = common[:end]
    messages = parse_hh(prompt_text)
    if not messages or not any(m["content"].strip() for m in messages):
        raise InvalidRow(Reason.EMPTY_PROMPT)
    return messages, prompt_text, " ", [text[end:].strip() for text in raw]


def _common_prefix(texts: Sequence[str]) -> str:
    first, last = min(texts), max(texts)  # the common prefix of all = that of the extremes
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _last_assistant_tag_end(text: str) -> int | None:
    ends = [m.end() for m in HH_MARKER.finditer(text) if m.group(1) == "Assistant"]
    return ends[-1] if ends else None


def is_hh_prompt(text: str) -> bool:
    """True for "Human: ... Assistant:" transcripts ending with an open assistant turn."""
    stripped = text.lstrip("\n ")
    return stripped.startswith("Human:") and text.rstrip().endswith("Assistant:")


def parse_hh(text: str) -> list[dict]:
    """HH transcript -> messages; leading text becomes a system message, an open final
    "Assistant:" turn is dropped (it is where the response goes)."""
    marks = list(HH_MARKER.finditer(text))
    messages = []
    head = text[: marks[0].start()].strip() if marks else text.strip()
    if head:
        messages.append({"role": "system", "content": head})
    for i, mark in enumerate(marks):
        stop = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        messages.append({"role": HH_ROLES[mark.group(1)], "content": text[mark.end():stop].strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def render_plain(messages: Sequence[dict]) -> str:
    """Messages as HH-style plain text ending with an open "Assistant:" turn (no chat template)."""
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(message["content"])
        else:
            label = {"user": "Human", "assistant": "Assistant"}.get(message["role"],
                                                                    message["role"].capitalize())
            parts.append(f"\n\n{label}: {message['content']}")
    return "".join(parts) + ASSISTANT_TAG
