"""DPO / cDPO / IPO against hand-computed values and a naive fp64 implementation."""

from __future__ import annotations

import math

import torch

from aligndistil_cli.losses.dpo import preference_loss


def test_sigmoid_dpo_hand_computed():
    """policy (chosen, rejected) = (-1, -3), reference = (-2, -2), beta = 0.5.
    margin = (-1 - -2) - (-3 - -2) = 1 + 1 = 2; logits = 0.5 * 2 = 1;
    loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326169; rewards = 0.5, -0.5."""
    out = preference_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                          torch.tensor([-2.0]), beta=0.5)
    torch.testing.assert_close(out.losses, torch.tensor([0.31326169]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5]))


def test_cdpo_and_ipo_hand_computed():
    """Same inputs. cDPO eps=0.1: 0.9*log(1+e^-1) + 0.1*log(1+e^1) = 0.9*0.31326 + 0.1*1.31326
    = 0.41326169. IPO beta=0.5: (2 - 1/(2*0.5))^2 = (2 - 1)^2 = 1."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    cdpo = preference_loss(*args, beta=0.5, label_smoothing=0.1)
    torch.testing.assert_close(cdpo.losses, torch.tensor([0.41326169]))
    ipo = preference_loss(*args, beta=0.5, loss_type="ipo")
    torch.testing.assert_close(ipo.losses, torch.tensor([1.0]))


def test_matches_naive_fp64():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g) * 5 for _ in range(4))
    for beta in (0.01, 0.1, 1.0):
        out = preference_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.05)
        naive = []
        for a, b, c, d in zip(pc.double(), pr.double(), rc.double(), rr.double()):
            z = beta * ((a - c) - (b - d))
            sig = 1 / (1 + math.exp(-z))
            naive.append(-0.95 * math.log(sig) - 0.05 * math.log(1 - sig))
        torch.testing.assert_close(out.losses.double(), torch.tensor(naive, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)


def test_beta_limits_and_gradient_direction():
    """beta -> 0: loss -> log 2 whatever the margin; large beta: a positive margin gives ~0 loss."""
    args = (torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-3.0]))
    assert abs(float(preference_loss(*args, beta=1e-8).losses) - math.log(2)) < 1e-6
    assert float(preference_loss(*args, beta=100.0).losses) < 1e-6
    chosen = torch.tensor([-2.0], requires_grad=True)
    preference_loss(chosen, torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0])).losses.sum().backward()
    assert chosen.grad.item() < 0  # descending the loss raises the chosen log-prob


def test_rewards_are_detached():
    pc = torch.tensor([-1.0], requires_grad=True)
    out = preference_loss(pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    assert not out.chosen_rewards.requires_grad and out.losses.requires_grad
