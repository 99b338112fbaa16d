"""Token ids for prompts and responses, with or without a chat template, and truncation.

With a chat template the WHOLE conversation (prompt turns + assistant response) is templated once
and the response is what follows the templated prompt (``add_generation_prompt=True``) *as a token
prefix*. Templating prompt and response separately and concatenating would duplicate whatever the
template puts once per conversation (BOS, a default system prompt) and can tokenize the boundary
differently from how the model sees it at sampling time. When the templated prompt is not a token
prefix of the conversation (templates that render the last turn differently, whitespace merges),
the prompt and response are tokenized separately and the row carries a note (TRL warns likewise).

Templated text is tokenized with ``add_special_tokens=False``: the template writes its own BOS,
exactly as ``apply_chat_template(tokenize=True)`` does. Without a template the prompt is the plain
text, with the tokenizer's BOS once (if it adds one) and nothing else special.

Every response ends with exactly one EOS: whatever the template writes after the EOS (ChatML's
``"\\n"`` after ``<|im_end|>``) is cut, and EOS is appended when the template's turn terminator is
another token. A response cut by ``max_length`` keeps *no* EOS (as TRL does): the model must not
learn to stop where the text was merely truncated.
"""

from __future__ import annotations

from typing import Any, Sequence

from aligndistil_cli.data.layouts import Conversation, normalize_prompt
from aligndistil_cli.data.report import InvalidRow, Reason
from aligndistil_cli.errors import AlignDistilError


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's EOS id; a tokenizer without one cannot mark where responses end."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise AlignDistilError("the tokenizer has no EOS token",
                               "use a tokenizer with an eos_token (see tokenizer_config.json)")
    return int(eos)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` with no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos]`` when the tokenizer adds a BOS by itself, else ``[]`` (probed, not assumed)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if with_special and with_special[0] == bos else []


def render_template(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    """The chat template as text; a template that rejects the turns drops the row."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja raise_exception(), e.g. "roles must alternate"
        raise InvalidRow(Reason.MALFORMED, f"chat template rejected the turns: {exc}") from exc
    return text[0] if isinstance(text, list) else text


def prompt_ids_for(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Prompt ids ending with the generation prompt (template) or the plain prompt text."""
    if has_chat_template(tokenizer):
        return text_ids(tokenizer, render_template(tokenizer, conversation.prompt_messages, True))
    return _bos_prefix(tokenizer) + text_ids(tokenizer, conversation.prompt_text)


def response_ids_for(tokenizer: Any, conversation: Conversation, response: str,
                     prompt_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Response ids ending with one EOS, and whether the template split was a clean prefix.

    Returns:
        (ids, is_prefix): ``is_prefix`` is False when the fallback (separate tokenization) ran.
    """
    eos = eos_id(tokenizer)
    if tokenizer.eos_token and response.endswith(tokenizer.eos_token):
        response = response.removesuffix(tokenizer.eos_token)  # EOS comes from us, once
    if has_chat_template(tokenizer):
        turn = {"role": "assistant", "content": response}
        full = text_ids(tokenizer, render_template(tokenizer, [*conversation.prompt_messages, turn],
                                                   False))
        if full[: len(prompt_ids)] == list(prompt_ids) and len(full) > len(prompt_ids):
            return _end_with_eos(full[len(prompt_ids):], eos), True
        return _end_with_eos(text_ids(tokenizer, response), eos), False
    text = conversation.separator + response.lstrip() if conversation.separator else response
    return _end_with_eos(text_ids(tokenizer, text), eos), True


def _end_with_eos(ids: list[int], eos: int) -> list[int]:
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        return ids[: last + 1]
    return ids + [eos]


def truncate(prompt_ids: list[int], responses: list[list[int]], max_length: int | None,
             max_prompt_length: int | None) -> tuple[list[int], list[list[int]], set[Reason]]:
    """Cut the prompt from the LEFT to ``max_prompt_length``, then each response from the RIGHT
    so that prompt + response <= ``max_length``.

    Policy: a prompt over ``max_prompt_length`` is kept (left-cut, noted) unless the prompt alone
    then fills ``max_length``, which leaves no supervised token and drops the row (``NO_ROOM``).

    Returns:
        (prompt_ids, response_ids per response, notes).
    """
    notes: set[Reason] = set()
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
        notes.add(Reason.PROMPT_TOO_LONG)
    if max_length is None:
        return prompt_ids, responses, notes
    room = max_length - len(prompt_ids)
    if room <= 0:
        raise InvalidRow(Reason.NO_ROOM, f"{len(prompt_ids)} prompt tokens >= max_length "
                                         f"{max_length}")
    if any(len(r) > room for r in responses):
        notes.add(Reason.RESPONSE_TRUNCATED)
    return prompt_ids, [r[:room] for r in responses], notes


def encode_prompt(tokenizer: Any, prompt: str | list[dict]) -> list[int]:
    """Prompt ids for sampling: the chat template with its generation prompt, or the plain text.

    Gives the same ids as the prompt side of :func:`prepare_pairs` before truncation.
    """
    try:
        messages, text, sep = normalize_prompt(prompt)
    except InvalidRow as exc:
        raise AlignDistilError(f"cannot encode the prompt: {exc}",
                               "pass a non-empty string or a list of {role, content} messages"
                               ) from exc
    return prompt_ids_for(tokenizer, Conversation(messages, text, sep, []))


def decode_response(tokenizer: Any, ids: Any) -> str:
    """Generated ids -> text: stops at the first EOS, drops special tokens and outer whitespace."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
