"""The distillation loss (Eq. 18-19) against the official per-token loss and its own invariants."""

from __future__ import annotations

import math

import pytest
import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.losses import (
    DenseTargets,
    LiveTargets,
    TopKTargets,
    distill_loss,
    seq_index_from_mask,
)
from aligndistil_cli.teacher import OFFICIAL_NAMES, VARIANTS, HeadLogits, compose_teacher, topk_rows
from tests.test_teacher_compose import BETA, official_teacher, spec_for_official

B, L, V, H = 3, 6, 23, 8


def padded_batch(seed: int = 0):
    """Student/dpo/other logits [B, L, V] (fp64) and a response mask with ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    z = [2 * torch.randn(B, L, V, generator=g, dtype=torch.float64) for _ in range(3)]
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, (start, stop) in enumerate([(1, 6), (2, 4), (0, 6)]):
        mask[b, start:stop] = True
    return (*z, mask)


def official_loss(z_s, z_dpo, z_other, mask, mode: str, length_norm: bool):
    """fp64 transcription of the official loss (method.md §3 steps 1-7): per token
    w_t * sum_v p_theta (log p_theta - log pi*), masked sum per sequence, / token count with
    --reward_len_norm, mean over the micro-batch."""
    lp_s = torch.log_softmax(z_s, -1)
    flat = lambda z: z.reshape(-1, z.shape[-1])  # noqa: E731
    lp_star, w = official_teacher(flat(z_dpo), flat(z_other), mode)
    per_token = w.view(B, L) * (lp_s.exp() * (lp_s - lp_star.view(B, L, -1))).sum(-1)
    seq = per_token.masked_fill(~mask, 0).sum(-1)
    if length_norm:
        seq = seq / mask.sum(-1)
    return seq.mean()


@pytest.mark.parametrize("length_norm", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_live_loss_and_grads_match_official(variant, length_norm):
    z_s, z_dpo, z_other, mask = padded_batch()
    ref_s = z_s.clone().requires_grad_()
    ref = official_loss(ref_s, z_dpo, z_other, mask, OFFICIAL_NAMES[variant], length_norm)
    ref.backward()

    student = z_s[mask].float().requires_grad_()
    targets = LiveTargets(z_dpo[mask].float(), z_other[mask].float(), spec_for_official(variant))
    loss, metrics = distill_loss(student, targets, None, seq_index_from_mask(mask), B,
                                 length_norm=length_norm, chunk_tokens=4)
    loss.backward()
    assert loss.dtype == torch.float32 and metrics["n_tokens"] == mask.sum()
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-5)
    torch.testing.assert_close(student.grad.double(), ref_s.grad[mask], atol=1e-5, rtol=1e-4)


def _rows(seed: int = 0, n: int = 11, v: int = V):
    g = torch.Generator().manual_seed(seed)
    z_s, z_d, z_n = (2 * torch.randn(n, v, generator=g) for _ in range(3))
    seq = torch.tensor([0] * 4 + [1] * 2 + [2] * 5)[:n]
    return z_s, z_d, z_n, seq


def _loss_and_grad(student, targets, weight, seq, n_seq=3, **kw):
    student = student.detach().clone().requires_grad_()
    loss, metrics = distill_loss(student, targets, weight, seq, n_seq, **kw)
    loss.backward()
    return loss.detach(), student.grad, metrics


def test_dense_targets_equal_live_targets():
    z_s, z_d, z_n, seq = _rows()
    spec = spec_for_official("aligndistil")
    rows = compose_teacher(z_d, z_n, spec)
    live = _loss_and_grad(z_s, LiveTargets(z_d, z_n, spec), None, seq)
    dense = _loss_and_grad(z_s, DenseTargets(rows.logprobs), rows.weight, seq)
    torch.testing.assert_close(dense[0], live[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense[1], live[1], atol=1e-5, rtol=1e-5)
    assert "mean_alpha" in live[2] and "mean_alpha" not in dense[2]


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_chunked_equals_unchunked(kind, divergence):
    z_s, z_d, _, seq = _rows()
    lp = torch.log_softmax(z_d, -1)
    targets = DenseTargets(lp) if kind == "dense" else TopKTargets(*topk_rows(lp, 5))
    w = torch.rand(11) + 0.5
    ref = _loss_and_grad(z_s, targets, w, seq, chunk_tokens=10_000, divergence=divergence)
    for chunk in (1, 3, 11, 50):
        got = _loss_and_grad(z_s, targets, w, seq, chunk_tokens=chunk, divergence=divergence)
        torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[1], ref[1], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_fused_head_path_equals_logits_path(chunk):
    """hidden @ W[:V].T with a head wider than the shared vocabulary (V_head = V + 5)."""
    torch.manual_seed(5)
    hidden, weight = torch.randn(11, H), torch.randn(V + 5, H) / 2
    _, z_d, z_n, seq = _rows()
    targets = LiveTargets(z_d, z_n, spec_for_official("aligndistil"))

    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref, _ = distill_loss(h_ref @ w_ref[:V].t(), targets, None, seq, 3, chunk_tokens=chunk)
    ref.backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = distill_loss(h, targets, None, seq, 3, head_weight=w, chunk_tokens=chunk)
    loss.backward()
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-6, rtol=1e-5)
    assert w.grad[V:].abs().max() == 0


def test_teacher_head_logits_equal_teacher_logits():
    torch.manual_seed(6)
    z_s, _, _, seq = _rows()
    hd, hn, wt = torch.randn(11, H), torch.randn(11, H), torch.randn(V + 3, H)
    spec = spec_for_official("aligndistil")
    ref = _loss_and_grad(z_s, LiveTargets(hd @ wt[:V].t(), hn @ wt[:V].t(), spec), None, seq)
    got = _loss_and_grad(z_s, LiveTargets(HeadLogits(hd, wt, V), HeadLogits(hn, wt, V), spec), None, seq)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def naive_topk_kl(z_s, ids, lq_k, divergence: str):
    """(k+1)-category KL in fp64 by autograd-able ops: the k ids plus one tail bucket each side."""
    p = torch.softmax(z_s.double(), -1)
    p_k = p.gather(-1, ids.long())
    P = torch.cat([p_k, (1 - p_k.sum(-1, keepdim=True)).clamp(min=1e-12)], -1)
    q_k = lq_k.double().exp()
    Q = torch.cat([q_k, (1 - q_k.sum(-1, keepdim=True)).clamp(min=1e-12)], -1)
    first, second = (P, Q) if divergence == "reverse_kl" else (Q, P)
    return (first * (first.log() - second.log())).sum(-1)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl"])
def test_topk_kl_bounds_and_grads(divergence):
    z_s, z_d, _, seq = _rows(seed=7)
    lp = torch.log_softmax(z_d, -1)
    ones = torch.ones(11)
    exact = _loss_and_grad(z_s, DenseTargets(lp), ones, seq, divergence=divergence, length_norm=False)
    for k in (1, 4, 10):
        ids, vals = topk_rows(lp, k)
        got = _loss_and_grad(z_s, TopKTargets(ids, vals), ones, seq, divergence=divergence,
                             length_norm=False)
        # data-processing inequality: merging categories never increases a KL
        assert got[0] <= exact[0] + 1e-6
        ref_s = z_s.double().requires_grad_()
        ref = naive_topk_kl(ref_s, ids, vals, divergence).sum() / 3
        ref.backward()
        torch.testing.assert_close(got[0].double(), ref.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1].double(), ref_s.grad, atol=1e-5, rtol=1e-4)
    full = _loss_and_grad(z_s, TopKTargets(*topk_rows(lp, V)), ones, seq, divergence=divergence,
                          length_norm=False)
    torch.testing.assert_close(full[0], exact[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[1], exact[1], atol=1e-5, rtol=1e-5)


def test_forward_kl_matches_naive():
    z_s, z_d, _, seq = _rows(seed=8)
    lq = torch.log_softmax(z_d.double(), -1)
    w = torch.rand(11) + 0.5
    got = _loss_and_grad(z_s, DenseTargets(lq.float()), w, seq, divergence="forward_kl")
    ref_s = z_s.double().requires_grad_()
    per_tok = w.double() * (lq.exp() * (lq - torch.log_softmax(ref_s, -1))).sum(-1)
    ref = sum(per_tok[seq == s].mean() for s in range(3)) / 3
    ref.backward()
    torch.testing.assert_close(got[0].double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1].double(), ref_s.grad, atol=1e-5, rtol=1e-4)


def test_hand_computed_v3():
    """Uniform student p = (1/3, 1/3, 1/3), teacher pi* = (2/3, 1/6, 1/6) (the hand example of
    test_teacher_compose, w = 0.1): KL(p || pi*) = 1/3 (ln(1/2) + 2 ln 2) = ln(2)/3 = 0.2310491,
    loss = 0.1 * 0.2310491 = 0.0231049 (one token, one sequence). Forward KL(pi* || p) =
    2/3 ln 2 + 2/6 ln(1/2) = ln(2)/3 as well."""
    teacher = DenseTargets(torch.tensor([[2 / 3, 1 / 6, 1 / 6]]).log())
    for divergence in ("reverse_kl", "forward_kl"):
        loss, metrics = distill_loss(torch.zeros(1, 3), teacher, torch.tensor([0.1]),
                                     torch.tensor([0]), 1, divergence=divergence)
        torch.testing.assert_close(loss, torch.tensor(0.0231049))
        torch.testing.assert_close(metrics["kl"], torch.tensor(0.2310491))


def test_masked_and_empty_give_zero_loss_and_zero_grads():
    z_s, z_d, _, seq = _rows()
    z_s[3] = float("nan")  # garbage on a masked row must not leak into the loss
    lp = torch.log_softmax(z_d, -1)
    mask = torch.zeros(11, dtype=torch.bool)
    for targets in (DenseTargets(lp), TopKTargets(*topk_rows(lp, 3))):
        loss, grad, metrics = _loss_and_grad(z_s, targets, torch.ones(11), seq, mask=mask)
        assert loss == 0 and grad.abs().max() == 0 and metrics["kl"] == 0 and metrics["n_tokens"] == 0
    empty = torch.zeros(0, V, requires_grad=True)
    loss, metrics = distill_loss(empty, DenseTargets(torch.zeros(0, V)), torch.zeros(0),
                                 torch.zeros(0, dtype=torch.long), 0)
    loss.backward()
    assert loss == 0 and not torch.isnan(loss) and empty.grad.shape == (0, V)
    mask[4:] = True
    part = _loss_and_grad(z_s, DenseTargets(lp), torch.ones(11), seq, mask=mask)
    assert torch.isfinite(part[0]) and part[1][3].abs().max() == 0


def test_identical_distributions_give_zero_kl():
    z_s, _, _, seq = _rows()
    for divergence in ("reverse_kl", "forward_kl"):
        loss, grad, metrics = _loss_and_grad(z_s, DenseTargets(torch.log_softmax(z_s, -1)),
                                             torch.ones(11), seq, divergence=divergence)
        assert abs(loss.item()) < 1e-6 and grad.abs().max() < 1e-6


def test_bf16_inputs_are_computed_in_fp32():
    """bf16 student logits / hidden states: same result as fp32 math on the same bf16 values."""
    z_s, z_d, z_n, seq = _rows()
    spec = spec_for_official("aligndistil")
    live = LiveTargets(z_d.bfloat16(), z_n.bfloat16(), spec)
    loss, grad, _ = _loss_and_grad(z_s.bfloat16(), live, None, seq)
    ref, ref_grad, _ = _loss_and_grad(z_s.bfloat16().float(), LiveTargets(
        z_d.bfloat16().float(), z_n.bfloat16().float(), spec), None, seq)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad, atol=1e-4, rtol=1e-2)  # bf16-rounded grads
    torch.manual_seed(9)
    h, w = torch.randn(11, H), torch.randn(V, H)
    hb = h.bfloat16().requires_grad_()
    loss_b, _ = distill_loss(hb, live, None, seq, 3, head_weight=w.bfloat16())
    loss_b.backward()
    ref_h = h.bfloat16().float().requires_grad_()
    ref_b, _ = distill_loss(ref_h, live, None, seq, 3, head_weight=w.bfloat16().float())
    ref_b.backward()
    torch.testing.assert_close(loss_b, ref_b, atol=2e-2 * ref_b.abs().item(), rtol=0)
    torch.testing.assert_close(hb.grad.float(), ref_h.grad, atol=3e-2 * ref_h.grad.abs().max().item(),
                               rtol=0)


def test_accumulation_4x1_equals_1x4():
    """Four one-sequence micro-batches with denominator=4, summed, equal one 4-sequence batch."""
    g = torch.Generator().manual_seed(10)
    lengths = [3, 1, 5, 2]
    seq = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    z_s, z_d, z_n = (2 * torch.randn(len(seq), V, generator=g) for _ in range(3))
    targets = lambda sl: LiveTargets(z_d[sl], z_n[sl], spec_for_official("aligndistil"))  # noqa: E731
    whole, whole_grad, _ = _loss_and_grad(z_s, targets(slice(None)), None, seq, n_seq=4)
    student = z_s.clone().requires_grad_()
    total, start = 0.0, 0
    for n in lengths:
        sl = slice(start, start + n)
        loss, _ = distill_loss(student[sl], targets(sl), None, torch.zeros(n, dtype=torch.long), 1,
                               denominator=4)
        loss.backward()
        total, start = total + loss.detach(), start + n
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(student.grad, whole_grad)


def test_upstream_gradient_scales_and_no_grad_mode():
    z_s, z_d, _, seq = _rows()
    lp = torch.log_softmax(z_d, -1)
    base = _loss_and_grad(z_s, DenseTargets(lp), torch.ones(11), seq)
    student = z_s.clone().requires_grad_()
    loss, _ = distill_loss(student, DenseTargets(lp), torch.ones(11), seq, 3)
    (2.5 * loss).backward()
    torch.testing.assert_close(student.grad, 2.5 * base[1])
    with torch.no_grad():
        loss, _ = distill_loss(student, DenseTargets(lp), torch.ones(11), seq, 3)
    assert loss.grad_fn is None and torch.isclose(loss, base[0])


def test_argument_errors():
    z_s, z_d, _, seq = _rows()
    lp = DenseTargets(torch.log_softmax(z_d, -1))
    with pytest.raises(AlignDistilError):
        distill_loss(z_s, lp, torch.ones(11), seq, 3, divergence="jsd")
    with pytest.raises(ValueError):
        distill_loss(z_s, lp, None, seq, 3)
    with pytest.raises(ValueError):
        distill_loss(z_s, lp, torch.ones(11), seq, 2)  # seq_index 2 out of range
    with pytest.raises(ValueError):
        distill_loss(z_s[:, :5], lp, torch.ones(11), seq, 3)  # student narrower than V


def test_mixed_dtype_head_bf16_hidden_fp32_weight():
    """Autocast activations (bf16) with fp32 master weights: the head runs in fp32, grads keep
    each input's dtype."""
    torch.manual_seed(11)
    _, z_d, z_n, seq = _rows()
    live = LiveTargets(z_d, z_n, spec_for_official("aligndistil"))
    hb = torch.randn(11, H).bfloat16().requires_grad_()
    w = torch.randn(V, H, requires_grad=True)
    loss, _ = distill_loss(hb, live, None, seq, 3, head_weight=w)
    loss.backward()
    h_ref, w_ref = hb.detach().float().requires_grad_(), w.detach().clone().requires_grad_()
    ref, _ = distill_loss(h_ref, live, None, seq, 3, head_weight=w_ref)
    ref.backward()
    assert hb.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(w.grad, w_ref.grad)
    torch.testing.assert_close(hb.grad.float(), h_ref.grad, atol=1e-2 * h_ref.grad.abs().max().item(), rtol=0)
    zd = HeadLogits(hb.detach(), w.detach(), V)
    torch.testing.assert_close(zd.rows(slice(0, 11)), h_ref.detach() @ w.detach().t())


def test_regression_large_vocab_kl_precision():
    """A plain fp32 dot over ~150k vocabulary terms lost ~6e-5 relative; with torch.sum's pairwise
    reduction the fp32 KL matches the official fp32 formula to 1e-6 relative."""
    g = torch.Generator().manual_seed(12)
    z_s, z_t = (2 * torch.randn(4, 151_936, generator=g) for _ in range(2))
    lq = torch.log_softmax(z_t, -1)
    loss, _ = distill_loss(z_s, DenseTargets(lq), torch.ones(4), torch.zeros(4, dtype=torch.long), 1)
    lp = torch.log_softmax(z_s, -1)
    official = (lp.exp() * (lp - lq)).sum(-1).mean()
    assert abs(loss.item() - official.item()) <= 1e-6 * official.item()
