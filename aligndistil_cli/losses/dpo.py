"""Preference losses on sequence log-probabilities (DPO, cDPO, IPO).

All functions are pure: they take summed response log-probs of the policy and the reference
for the chosen and rejected responses and return per-pair losses plus detached rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLossOutput:
    """Per-pair results, all [B] fp32. Rewards are detached (diagnostics only)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _sigmoid_dpo(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7); with label smoothing eps it is cDPO (Mitchell 2023):
    -(1 - eps) log sigma(beta * margin) - eps log sigma(-beta * margin)."""
    logits = beta * margin
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _ipo(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17): (margin - 1 / (2 beta))^2, with beta as IPO's tau.

    Like TRL, the margin uses summed log-probs; label smoothing does not apply to IPO.
    """
    return (margin - 1.0 / (2.0 * beta)) ** 2


PREFERENCE_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid_dpo,
    "ipo": _ipo,
}


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Per-pair preference loss.

    Args:
        policy_chosen, policy_rejected: [B] summed response log-probs under the policy.
        ref_chosen, ref_rejected: [B] the same under the reference model (no grad).
        beta: the KL coefficient (DPO's beta; IPO's tau).
        loss_type: a key of ``PREFERENCE_LOSSES``.
        label_smoothing: cDPO's probability that a label is flipped (sigmoid loss only).
    Returns:
        losses [B] and the implicit rewards beta * (log pi - log pi_ref) of both responses.
    """
    chosen_ratio = policy_chosen.float() - ref_chosen.float()
    rejected_ratio = policy_rejected.float() - ref_rejected.float()
    losses = PREFERENCE_LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, label_smoothing)
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )
