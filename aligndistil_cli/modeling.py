"""Final hidden states at response positions, and the model's output head.

Token-level losses and the teacher need, per response token, the distribution that predicts it.
Running the decoder and applying the head only to those rows, chunk by chunk, avoids the
[B, L, V] logits tensor a plain ``model(...)`` call would build.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aligndistil_cli.batching import SequenceBatch
from aligndistil_cli.errors import AlignDistilError


@dataclass
class ResponseRows:
    """Response positions of a batch, flattened.

    Attributes:
        hidden: [N, H] final hidden states at the positions predicting each response token
            (position i - 1 predicts token i).
        next_ids: [N] the response tokens being predicted.
        seq_index: [N] which sequence of the batch each row belongs to.
    """

    hidden: torch.Tensor
    next_ids: torch.Tensor
    seq_index: torch.Tensor


def response_positions(batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seq index [N], predicting position [N], predicted token [N]) for every response token.

    Row j of sequence b predicts response token j at index response_start + j, from the output at
    position response_start + j - 1. The final EOS is included. (The official trainers skip the
    first response token's distribution: method spec section 8.7; we do not.)
    """
    seq, tok = batch.response_mask.nonzero(as_tuple=True)
    if bool((tok == 0).any()):
        raise AlignDistilError("a response starts at position 0 (empty prompt)",
                               "every example needs at least one prompt token")
    return seq, tok - 1, batch.input_ids[seq, tok]


def decoder_hidden(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """[B, L, H] final hidden states (after the final norm) of a causal LM."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        raise AlignDistilError(f"{type(model).__name__} exposes no decoder",
                               "use a standard Hugging Face *ForCausalLM model")
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def head_weight(model: torch.nn.Module) -> torch.Tensor:
    """[V_head, H] output projection. Models with a head bias or logit soft-capping are refused
    rather than silently mis-scored."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None or getattr(model.config, "final_logit_softcapping", None):
        raise AlignDistilError(f"{type(model).__name__} has a biased or soft-capped output head",
                               "this head is not supported by the chunked token losses yet")
    return head.weight


def response_rows(model: torch.nn.Module, batch: SequenceBatch) -> ResponseRows:
    seq, pos, nxt = response_positions(batch)
    hidden = decoder_hidden(model, batch)
    return ResponseRows(hidden[seq, pos], nxt, seq)
