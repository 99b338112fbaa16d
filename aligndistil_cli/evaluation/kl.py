"""Sequence log-probabilities, the Monte-Carlo sequence KL to the reference, implicit rewards."""

from __future__ import annotations

from typing import Sequence

import torch

from aligndistil_cli.batching import make_batch, response_logps


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]],
                   response_ids: Sequence[Sequence[int]], *, batch_size: int,
                   vocab_size: int | None = None, device: str | torch.device = "cpu"
                   ) -> torch.Tensor:
    """log pi(response | prompt), summed over response tokens, for N pairs.

    Args:
        prompt_ids, response_ids: N token-id lists each (responses end with EOS).
        vocab_size: shared vocabulary; softmax over the first ``vocab_size`` head rows only.
    Returns:
        [N] fp32 on CPU, in input order.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    # Longest first: little padding per batch, and an out-of-memory error shows up at once.
    order = sorted(range(len(prompt_ids)),
                   key=lambda i: -(len(prompt_ids[i]) + len(response_ids[i])))
    out = torch.zeros(len(order), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            # Right padding with pad id 0: padded positions are masked out of attention and
            # out of the response mask, so the id itself never matters.
            batch = make_batch([prompt_ids[i] for i in idx], [response_ids[i] for i in idx],
                               pad_id=0).to(device)
            out[idx] = response_logps(model, batch, vocab_size).float().cpu()  # [B]
    finally:
        model.train(was_training)
    return out


def sequence_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> float:
    """Monte-Carlo estimate of the sequence KL(pi || pi_ref): mean of log pi(y|x) - log pi_ref(y|x).

    Unbiased only when the responses y were sampled from the policy pi itself (on its prompts);
    a single estimate can be negative, the expectation cannot.

    Args:
        policy_logps, ref_logps: [N] summed response log-probs of the same N samples.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.numel() == 0:
        raise ValueError(f"need equal, non-empty shapes, got {policy_logps.shape}, "
                         f"{ref_logps.shape}")
    return float((policy_logps.double() - ref_logps.double()).mean())


def reward_scores(dpo_logps: torch.Tensor, neg_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Implicit reward beta * (log pi_dpo(y|x) - log pi_dpo^-(y|x)), elementwise.

    AlignDistil's contrastive reward: the DPO model against the reverse-DPO model (trained on
    swapped preferences) instead of the reference. Shapes: [N], [N] -> [N].
    """
    return beta * (dpo_logps - neg_logps)
