"""Padding token sequences into batches, and per-sequence response log-probabilities.

Conventions used everywhere in aligndistil:
- a sequence is ``prompt_ids + response_ids``; the response ends with EOS;
- ``response_mask[b, i]`` is True when token ``i`` of sequence ``b`` is a response token;
- the distribution that predicts token ``i`` is the model's output at position ``i - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class SequenceBatch:
    """Right-padded token sequences.

    Attributes:
        input_ids: [B, L] long.
        attention_mask: [B, L] long, 1 on real tokens.
        response_mask: [B, L] bool, True on response tokens (never on padding).
        response_start: [B] long, index of the first response token of each sequence.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    response_start: torch.Tensor

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                      self.response_mask, self.response_start)))

    @property
    def n_response_tokens(self) -> int:
        return int(self.response_mask.sum())


def make_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               pad_id: int) -> SequenceBatch:
    """Concatenate each prompt with its response and right-pad to the longest sequence."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    n = len(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        input_ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[b, : len(seq)] = 1
        response[b, len(p): len(seq)] = True
    starts = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return SequenceBatch(input_ids, attention, response, starts)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation. Returns (input_ids [B, L], attention_mask [B, L])."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, s in enumerate(sequences):
        if len(s):
            ids[b, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[b, width - len(s):] = 1
    return ids, mask


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_i | tokens_<i) for i >= 1, in fp32.

    Args:
        logits: [B, L, V] (any float dtype).
        input_ids: [B, L].
    Returns:
        [B, L] fp32; column 0 is 0 (no prediction for the first token).
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


def response_logps(model: torch.nn.Module, batch: SequenceBatch, vocab_size: int | None = None
                   ) -> torch.Tensor:
    """Sum of log-probabilities of each sequence's response tokens: [B] fp32.

    ``vocab_size`` limits the softmax to the first rows of the head (shared vocabulary of models
    with padded heads, see ``aligndistil_cli.models.shared_vocab_size``).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    per_token = token_logps(logits, batch.input_ids)
    return per_token.masked_fill(~batch.response_mask, 0.0).sum(-1)
