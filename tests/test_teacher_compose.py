"""Teacher composition (paper Eq. 11, 15-17) against the official code's formulas (method.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.teacher import (
    OFFICIAL_NAMES,
    VARIANTS,
    HeadLogits,
    TeacherSpec,
    compose_chunked,
    compose_teacher,
    expected_reward,
    token_reward,
    topk_rows,
)

BETA, BETA2 = 0.1, 10.0


def official_teacher(z_dpo, z_other, mode: str, beta: float = BETA, beta2: float = BETA2):
    """fp64 transcription of the official ``reward_boost_type`` branches (method.md §3).

    ``z_other`` is the reverse-DPO model (``aligndistil``, ``theorem1_contrast``) or the reference
    model (``theorem1``, ``theorem1_adaptive``). Returns (teacher log-probs [N, V], loss weight [N]).
    """
    z_dpo, z_other = z_dpo.double(), z_other.double()
    tvd_code = (torch.softmax(z_dpo, -1) - torch.softmax(z_other, -1)).abs().sum(-1)  # no 1/2
    n = z_dpo.shape[0]
    if mode == "aligndistil":
        alpha = beta2 * tvd_code + 1e-3
        z_star, w = alpha[:, None] * (z_dpo - z_other) + z_dpo, beta / alpha
    elif mode == "theorem1_contrast":
        c = beta / beta2
        z_star, w = z_dpo + c * (z_dpo - z_other), torch.full((n,), beta2, dtype=torch.float64)
    elif mode == "theorem1_adaptive":
        alpha = beta2 * tvd_code + 1e-3
        z_star, w = alpha[:, None] * z_dpo + (1 - alpha[:, None]) * z_other, beta / alpha
    elif mode == "theorem1":
        c = beta / beta2
        z_star, w = c * z_dpo + (1 - c) * z_other, torch.full((n,), beta2, dtype=torch.float64)
    return torch.log_softmax(z_star, -1), w


def spec_for_official(variant: str) -> TeacherSpec:
    """Our spec reproducing the official run with --beta 0.1 --beta2 10."""
    constant = VARIANTS[variant][1] == "constant"
    return TeacherSpec.from_variant(variant, alpha=BETA / BETA2 if constant else None,
                                    alpha_max=2 * BETA2, beta=BETA)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compose_matches_official_formulas(variant):
    torch.manual_seed(1)
    z_dpo, z_other = 3 * torch.randn(16, 40), 3 * torch.randn(16, 40)
    z_dpo[:4] = z_other[:4]  # include positions where the two models agree (alpha = eps)
    rows = compose_teacher(z_dpo, z_other, spec_for_official(variant))
    ref_lp, ref_w = official_teacher(z_dpo, z_other, OFFICIAL_NAMES[variant])
    assert rows.logprobs.dtype == torch.float32
    torch.testing.assert_close(rows.logprobs.double(), ref_lp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rows.weight.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert rows.tvd.min() >= 0 and rows.tvd.max() <= 1


def test_hand_computed_v3():
    """V = 3, p_dpo = (1/2, 1/4, 1/4) [z_dpo = (ln 2, 0, 0)], p_neg uniform [z_neg = 0].

    TVD = 1/2 (|1/2 - 1/3| + 2 |1/4 - 1/3|) = 1/6. alpha_max = 5.994, eps = 0.001 gives
    alpha = 5.994 / 6 + 0.001 = 1.0, so z* = z_dpo + (z_dpo - z_neg) = (2 ln 2, 0, 0) and
    pi* = (4, 1, 1) / 6 = (2/3, 1/6, 1/6); weight = beta / alpha = 0.1.
    Reward of token 0: 0.1 (ln 1/2 - ln 1/3) = 0.1 ln 1.5 = 0.0405465.
    Expected reward under a uniform student: 0.1/3 (ln(3/2) + 2 ln(3/4))
    = 0.1/3 (0.405465 - 0.575364) = -0.0056633.
    """
    z_dpo = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    z_neg = torch.zeros(1, 3)
    rows = compose_teacher(z_dpo, z_neg, TeacherSpec(alpha_max=5.994, eps=1e-3, beta=0.1))
    torch.testing.assert_close(rows.tvd, torch.tensor([1 / 6]))
    torch.testing.assert_close(rows.alpha, torch.tensor([1.0]))
    torch.testing.assert_close(rows.weight, torch.tensor([0.1]))
    torch.testing.assert_close(rows.logprobs.exp(), torch.tensor([[2 / 3, 1 / 6, 1 / 6]]))
    torch.testing.assert_close(token_reward(z_dpo, z_neg, torch.tensor([0]), 0.1),
                               torch.tensor([0.0405465]))
    uniform = torch.full((1, 3), -math.log(3.0))
    torch.testing.assert_close(expected_reward(uniform, z_dpo, z_neg, 0.1), torch.tensor([-0.0056633]),
                               atol=1e-6, rtol=0)


def test_identical_models_give_the_dpo_distribution():
    """TVD = 0 -> alpha = eps, w = beta/eps, and the teacher is the DPO model itself."""
    z = torch.randn(5, 17)
    rows = compose_teacher(z, z.clone(), TeacherSpec())
    torch.testing.assert_close(rows.tvd, torch.zeros(5))
    torch.testing.assert_close(rows.alpha, torch.full((5,), 1e-3))
    torch.testing.assert_close(rows.weight, torch.full((5,), 100.0))
    torch.testing.assert_close(rows.logprobs, torch.log_softmax(z, -1))


def test_reference_contrast_uses_neg_as_base_and_explicit_base_wins():
    torch.manual_seed(2)
    z_dpo, z_ref, z_other = torch.randn(3, 9), torch.randn(3, 9), torch.randn(3, 9)
    spec = TeacherSpec(contrast="reference", alpha=0.5)
    rows = compose_teacher(z_dpo, z_ref, spec)
    torch.testing.assert_close(rows.logprobs, torch.log_softmax(0.5 * z_dpo + 0.5 * z_ref, -1))
    explicit = compose_teacher(z_dpo, z_ref, spec, z_base=z_other)
    torch.testing.assert_close(explicit.logprobs,
                               torch.log_softmax(z_other + 0.5 * (z_dpo - z_ref), -1))


def test_from_variant_table_and_validation():
    assert TeacherSpec.from_variant("aligndistil") == TeacherSpec()
    assert TeacherSpec.from_variant("theorem1").alpha == 1.0
    assert TeacherSpec.from_variant("adaptive", alpha=0.3) == TeacherSpec("reference", 0.3)
    assert TeacherSpec.from_variant("contrastive", alpha=2.0).to_dict() == {
        "contrast": "reverse", "alpha": 2.0, "alpha_max": 20.0, "eps": 1e-3, "beta": 0.1}
    for bad in (lambda: TeacherSpec.from_variant("nope"), lambda: TeacherSpec(contrast="x"),
                lambda: TeacherSpec(alpha=0.0), lambda: TeacherSpec(eps=0.0)):
        with pytest.raises(AlignDistilError):
            bad()


def test_bf16_inputs_compose_in_fp32():
    torch.manual_seed(3)
    z_dpo, z_neg = torch.randn(8, 50).bfloat16(), torch.randn(8, 50).bfloat16()
    rows = compose_teacher(z_dpo, z_neg, TeacherSpec())
    ref = compose_teacher(z_dpo.float(), z_neg.float(), TeacherSpec())
    assert rows.logprobs.dtype == torch.float32
    torch.testing.assert_close(rows.logprobs, ref.logprobs, atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_compose_chunked_matches_whole_and_head_logits(chunk):
    torch.manual_seed(4)
    h_d, h_n, w = torch.randn(7, 6), torch.randn(7, 6), torch.randn(20, 6)
    z_d, z_n = h_d @ w[:15].t(), h_n @ w[:15].t()
    whole = compose_teacher(z_d, z_n, TeacherSpec())
    parts = list(compose_chunked(HeadLogits(h_d, w, 15), HeadLogits(h_n, w, 15), TeacherSpec(),
                                 chunk_tokens=chunk))
    assert [sl.start for sl, _ in parts] == list(range(0, 7, chunk))
    torch.testing.assert_close(torch.cat([r.logprobs for _, r in parts]), whole.logprobs)
    torch.testing.assert_close(torch.cat([r.weight for _, r in parts]), whole.weight)
    ids = torch.arange(7) % 15
    rewards = [fn for _, fn in compose_chunked(z_d, z_n, TeacherSpec(), chunk_tokens=chunk,
                                               fn=lambda r, zd, zn: zd)]
    torch.testing.assert_close(torch.cat(rewards), z_d)
    torch.testing.assert_close(token_reward(z_d, z_n, ids, 0.1),
                               0.1 * (torch.log_softmax(z_d, -1) - torch.log_softmax(z_n, -1))
                               .gather(-1, ids[:, None]).squeeze(-1))


def test_topk_rows():
    lp = torch.log_softmax(torch.randn(4, 30), -1)
    ids, vals = topk_rows(lp, 5)
    assert ids.dtype == torch.int32 and vals.dtype == torch.float32 and ids.shape == (4, 5)
    torch.testing.assert_close(vals, lp.gather(-1, ids.long()))
    assert (vals[:, :-1] >= vals[:, 1:]).all() and (lp >= vals[:, -1:]).sum(-1).eq(5).all()
    assert topk_rows(lp, 99)[0].shape == (4, 30)
    with pytest.raises(AlignDistilError):
        topk_rows(lp, 0)
