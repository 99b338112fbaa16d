"""The AlignDistil distillation loss (paper Eq. 18-19), chunked over positions with fused gradients.

    L = 1/D * sum_seq 1/n_seq_tokens * sum_{t in seq} w_t * KL(pi_theta(.|t) || pi*(.|t))

with w_t = beta0 / alpha_t, n_seq_tokens = |y| (``length_norm=True``, the paper and the official
``--reward_len_norm``) or 1 (``length_norm=False``: sum over tokens), and D = the number of
sequences (mean over sequences). Reverse KL, student first, is the method (``"reverse_kl"``);
``"forward_kl"`` = KL(pi* || pi_theta) is offered for comparison.

Rows. Everything is given per response position ("row"): ``student`` [N, V] logits or [N, H] final
hidden states (+ ``head_weight``), targets for the same N rows, ``seq_index`` [N] = the sequence each
row belongs to. From a padded batch: ``rows = x[response_mask]``, ``seq_index =
seq_index_from_mask(response_mask)``.

Targets, one of:
- :class:`DenseTargets`: teacher log-probs [N, V] (exact KL);
- :class:`TopKTargets`: the teacher's top-k ids and log-probs [N, k] (normalized over the full
  vocabulary); the KL is taken over k + 1 categories, the k ids plus a tail bucket holding
  1 - sum(top-k) of each distribution. By the data-processing inequality it is <= the exact KL,
  with equality when k = V;
- :class:`LiveTargets`: the DPO / neg (/ base) logits, or :class:`HeadLogits` hidden states + heads;
  the teacher is composed chunk by chunk with :func:`compose_teacher` and the weight w_t comes from
  the composition.

Memory. Rows are processed ``chunk_tokens`` at a time inside one ``torch.autograd.Function`` that
computes the loss *and* its gradient in the forward pass (fused linear + loss, as Liger-Kernel):
with ``head_weight`` the student logits of a chunk are ``hidden[chunk] @ head_weight[:V].T`` and the
gradients w.r.t. hidden and head weight are accumulated chunk by chunk, so no [N, V] tensor ever
exists (extra memory O(chunk x V) plus an fp32 [V_head, H] gradient accumulator). With student
logits the only [N, V] tensor is the gradient of those logits, which autograd would allocate anyway.
Backward only scales the stored gradients by the incoming gradient.

Gradient accumulation. ``denominator`` (default ``n_seq``) divides the sum of per-sequence losses.
A caller splitting a global batch of G sequences into micro-batches passes ``denominator=G`` to every
micro-batch and *sums* (backwards) the micro-batch losses: the result equals one call on the whole
batch (1 x 4 == 4 x 1), i.e. every sequence has equal weight, as DeepSpeed's averaging in the
official code.

All math is fp32 whatever the input dtype (the lm_head matmul runs in the input dtype, as the
model's own head would, and its result is upcast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.teacher.compose import Logits, TeacherSpec, compose_teacher, logit_rows, n_vocab

#: floor of the tail masses before taking their log (top-k targets).
TAIL_FLOOR = 1e-12


@dataclass
class DenseTargets:
    """Teacher log-probs [N, V] (normalized over V), any float dtype."""

    logprobs: Tensor


@dataclass
class TopKTargets:
    """The teacher's top-k: ``ids`` [N, k] int (distinct per row) and ``logprobs`` [N, k], normalized
    over the full vocabulary (as stored by the teacher cache)."""

    ids: Tensor
    logprobs: Tensor


@dataclass
class LiveTargets:
    """Teacher composed on the fly from the models' logits [N, V] or :class:`HeadLogits`.

    ``z_neg`` = reverse-DPO model (contrast "reverse") or reference model ("reference");
    ``z_base`` None picks the base from ``spec.contrast`` (see :func:`compose_teacher`).
    """

    z_dpo: Logits
    z_neg: Logits
    spec: TeacherSpec
    z_base: Logits | None = None


Targets = Union[DenseTargets, TopKTargets, LiveTargets]


@dataclass
class _Chunk:
    """The teacher for one chunk of rows, fp32: dense [c, V] or top-k [c, k] log-probs."""

    logprobs: Tensor
    ids: Tensor | None = None
    weight: Tensor | None = None
    alpha: Tensor | None = None
    tvd: Tensor | None = None


def _dense_chunk(t: DenseTargets, sl: slice) -> _Chunk:
    return _Chunk(t.logprobs[sl].detach().float())


def _topk_chunk(t: TopKTargets, sl: slice) -> _Chunk:
    return _Chunk(t.logprobs[sl].detach().float(), ids=t.ids[sl].long())


def _live_chunk(t: LiveTargets, sl: slice) -> _Chunk:
    base = None if t.z_base is None else logit_rows(t.z_base, sl)
    rows = compose_teacher(logit_rows(t.z_dpo, sl), logit_rows(t.z_neg, sl), t.spec, base)
    return _Chunk(rows.logprobs, weight=rows.weight, alpha=rows.alpha, tvd=rows.tvd)


_TARGET_CHUNK: dict[type, Callable[..., _Chunk]] = {
    DenseTargets: _dense_chunk, TopKTargets: _topk_chunk, LiveTargets: _live_chunk,
}
_TARGET_KIND: dict[type, str] = {DenseTargets: "dense", TopKTargets: "topk", LiveTargets: "dense"}


def _reverse_kl_dense(z: Tensor, t: _Chunk, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """KL(p || q) = sum_v p (log p - log q), p = softmax(z), and d/dz_j = p_j (log p_j/q_j - KL).

    Args: z [c, V] fp32 student logits; t.logprobs [c, V] log q. Returns (kl [c], grad [c, V]).
    """
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    terms = logp.sub_(t.logprobs).mul_(p)  # in place: two [c, V] buffers in all
    # torch.sum's pairwise reduction: a plain fp32 dot over 150k terms loses ~1e-4 relative
    kl = terms.sum(-1)
    return kl, (terms.sub_(p.mul_(kl[:, None])) if need_grad else None)


def _forward_kl_dense(z: Tensor, t: _Chunk, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """KL(q || p) = sum_v q (log q - log p), and d/dz_j = p_j - q_j (sum_v q = 1)."""
    logp = torch.log_softmax(z, -1)
    q = t.logprobs.exp()
    # q = 0 entries contribute 0 (0 * log 0 convention), not NaN
    kl = torch.where(q > 0, q * (t.logprobs - logp), 0.0).sum(-1)
    return kl, (logp.exp_().sub_(q) if need_grad else None)


def _topk_parts(z: Tensor, t: _Chunk) -> tuple[Tensor, ...]:
    """Student/teacher masses of the k + 1 categories: (lse [c], logp_k [c, k], logp_tail [c],
    q_k [c, k], q_tail [c]); the tail is computed as a log-sum-exp of the non-kept logits (no
    cancellation), the teacher tail as 1 - sum(q_k), clamped at TAIL_FLOOR."""
    lse = torch.logsumexp(z, -1)
    logp_k = z.gather(-1, t.ids) - lse[:, None]
    logp_tail = torch.logsumexp(z.scatter(-1, t.ids, float("-inf")), -1) - lse
    q_k = t.logprobs.exp()
    # sum in fp64: the tail can be a small difference of numbers near 1
    q_tail = (1.0 - q_k.double().sum(-1)).clamp(min=TAIL_FLOOR).float()
    return lse, logp_k, logp_tail, q_k, q_tail


def _reverse_kl_topk(z: Tensor, t: _Chunk, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(k+1)-category KL(P || Q). Gradient: d/dz_j = p_j (log P_c(j)/Q_c(j) - KL), c(j) = the
    category of token j (its own id if kept, else the tail)."""
    lse, logp_k, logp_tail, q_k, q_tail = _topk_parts(z, t)
    ratio_k = logp_k - t.logprobs
    p_tail = logp_tail.exp()
    # an empty / underflowed tail contributes 0, not 0 * -inf
    ratio_tail = torch.where(p_tail > 0, logp_tail - q_tail.log(), 0.0)
    kl = (logp_k.exp() * ratio_k).sum(-1) + p_tail * ratio_tail
    if not need_grad:
        return kl, None
    p = (z - lse[:, None]).exp_()
    grad = p * (ratio_tail - kl)[:, None]
    return kl, grad.scatter_(-1, t.ids, logp_k.exp() * (ratio_k - kl[:, None]))


def _forward_kl_topk(z: Tensor, t: _Chunk, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(k+1)-category KL(Q || P), P_tail clamped at TAIL_FLOOR inside the log. Gradient
    d/dz_j = p_j (sum Q_k + u Q_tail) - q_j [j kept] - u Q_tail p_j / P_tail [j in tail], with u = 1
    where P_tail is above the floor (else the clamped term is constant in z)."""
    lse, logp_k, logp_tail, q_k, q_tail = _topk_parts(z, t)
    p_tail = logp_tail.exp()
    kl = (q_k * (t.logprobs - logp_k)).sum(-1) + q_tail * (
        q_tail.log() - logp_tail.clamp(min=math.log(TAIL_FLOOR)))
    if not need_grad:
        return kl, None
    live_tail = torch.where(p_tail >= TAIL_FLOOR, q_tail, 0.0)
    total = q_k.sum(-1) + live_tail
    p = (z - lse[:, None]).exp_()
    grad = p * (total - live_tail / p_tail.clamp(min=TAIL_FLOOR))[:, None]
    return kl, grad.scatter_(-1, t.ids, logp_k.exp() * total[:, None] - q_k)


_DIVERGENCES: dict[tuple[str, str], Callable[[Tensor, _Chunk, bool], tuple[Tensor, Tensor | None]]] = {
    ("dense", "reverse_kl"): _reverse_kl_dense,
    ("dense", "forward_kl"): _forward_kl_dense,
    ("topk", "reverse_kl"): _reverse_kl_topk,
    ("topk", "forward_kl"): _forward_kl_topk,
}
DIVERGENCES = ("reverse_kl", "forward_kl")


class _LogitsStudent:
    """Student given as logits [N, V_s] (V_s >= V; the first V columns are the shared vocabulary)."""

    def __init__(self, logits: Tensor, head_weight: None, vocab: int, need_grad: bool) -> None:
        self.logits, self.vocab = logits, vocab
        self.grad = torch.zeros_like(logits) if need_grad and logits.requires_grad else None

    def rows(self, sl: slice) -> Tensor:
        return self.logits[sl, : self.vocab].detach().float()

    def add_grad(self, sl: slice, g: Tensor) -> None:
        if self.grad is not None:
            self.grad[sl, : self.vocab] = g

    def grads(self) -> tuple[Tensor | None, Tensor | None]:
        return self.grad, None


class _HeadStudent:
    """Student given as final hidden states [N, H] and lm_head weight [V_head, H]: the logits of a
    chunk are computed, used and dropped (no [N, V] tensor)."""

    def __init__(self, hidden: Tensor, head_weight: Tensor, vocab: int, need_grad: bool) -> None:
        self.hidden, self.weight, self.vocab = hidden.detach(), head_weight.detach(), vocab
        # bf16 hidden states (autocast) with fp32 master weights: multiply in the wider dtype
        self.dtype = torch.promote_types(hidden.dtype, head_weight.dtype)
        self.head = self.weight[:vocab].to(self.dtype)  # a view unless a cast is needed
        self.grad_h = torch.zeros_like(hidden) if need_grad and hidden.requires_grad else None
        # fp32 accumulator: summing many chunk contributions in bf16 would lose precision
        self.grad_w = (torch.zeros(head_weight.shape, dtype=torch.float32, device=head_weight.device)
                       if need_grad and head_weight.requires_grad else None)

    def rows(self, sl: slice) -> Tensor:
        return (self.hidden[sl].to(self.dtype) @ self.head.t()).float()

    def add_grad(self, sl: slice, g: Tensor) -> None:
        g = g.to(self.dtype)
        if self.grad_h is not None:
            self.grad_h[sl] = (g @ self.head).to(self.grad_h.dtype)
        if self.grad_w is not None:
            self.grad_w[: self.vocab].add_(g.t() @ self.hidden[sl].to(self.dtype))

    def grads(self) -> tuple[Tensor | None, Tensor | None]:
        gw = None if self.grad_w is None else self.grad_w.to(self.weight.dtype)
        return self.grad_h, gw


@dataclass
class _Plan:
    """Everything one loss evaluation needs besides the student tensors."""

    targets: Targets
    weight: Tensor | None  # [N] or None (live: from the composition)
    coef: Tensor  # [N] fp32: mask / tokens-of-its-sequence / denominator (0 on masked rows)
    mask: Tensor  # [N] bool
    divergence: str
    chunk_tokens: int

    def run(self, student: _LogitsStudent | _HeadStudent, need_grad: bool
            ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss (fp32 scalar) and summed metrics; accumulates gradients into ``student``."""
        div = _DIVERGENCES[(_TARGET_KIND[type(self.targets)], self.divergence)]
        # present even with no rows, so callers can log them unconditionally
        sums: dict[str, Tensor] = {k: self.coef.new_zeros(()) for k in ("kl", "weighted_kl", "weight")}
        loss = self.coef.new_zeros(())
        for start in range(0, self.coef.shape[0], self.chunk_tokens):
            sl = slice(start, start + self.chunk_tokens)
            teacher = _TARGET_CHUNK[type(self.targets)](self.targets, sl)
            kl, grad = div(student.rows(sl), teacher, need_grad)
            m = self.mask[sl]
            w = (self.weight[sl].float() if self.weight is not None else teacher.weight)
            kl, w = kl.masked_fill(~m, 0.0), w.masked_fill(~m, 0.0)
            c = self.coef[sl] * w
            loss = loss + (c * kl).sum()
            if grad is not None:
                student.add_grad(sl, grad.mul_(c[:, None]).masked_fill_(~m[:, None], 0.0))
            for name, value in (("kl", kl), ("weighted_kl", w * kl), ("weight", w),
                                ("alpha", teacher.alpha), ("tvd", teacher.tvd)):
                if value is not None:
                    sums[name] = sums.get(name, 0.0) + value.masked_fill(~m, 0.0).sum()
        return loss, sums


class _FusedDistill(torch.autograd.Function):
    """Loss and gradients in one chunked pass; backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, plan: _Plan, student: _LogitsStudent | _HeadStudent, stats: dict,
                x: Tensor, w: Tensor | None) -> Tensor:  # x, w only connect the graph
        loss, sums = plan.run(student, need_grad=True)
        stats.update(sums)
        ctx.grads = student.grads()
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        gx, gw = ctx.grads
        del ctx.grads
        # skip the multiply (and its [N, V] temporary) for the usual grad_out == 1
        scale = (lambda g: g) if bool(grad_out == 1) else (
            lambda g: None if g is None else g * grad_out.to(g.dtype))
        return None, None, None, scale(gx), scale(gw)


def seq_index_from_mask(response_mask: Tensor) -> Tensor:
    """Sequence index of every row of ``x[response_mask]``: [N] long, from a [B, L] bool mask."""
    return response_mask.nonzero()[:, 0]


def _resolve_vocab(student: Tensor, targets: Targets, head_weight: Tensor | None,
                   vocab_size: int | None) -> int:
    """The shared vocabulary V: from the targets when they have one, else vocab_size / the head."""
    known = {DenseTargets: lambda t: t.logprobs.shape[-1], LiveTargets: lambda t: n_vocab(t.z_dpo),
             TopKTargets: lambda t: None}[type(targets)](targets)
    available = (head_weight if head_weight is not None else student.T).shape[0]
    vocab = vocab_size or known or available
    if (known is not None and vocab != known) or vocab > available:
        raise ValueError(f"vocabulary mismatch: targets {known}, vocab_size {vocab_size}, "
                         f"student has {available} rows")
    return vocab


def _row_coef(seq_index: Tensor, mask: Tensor, n_seq: int, length_norm: bool,
              denominator: float | None) -> Tensor:
    """Per-row factor 1/(tokens of its sequence)/denominator, 0 on masked rows: [N] fp32."""
    if seq_index.numel() and (int(seq_index.min()) < 0 or int(seq_index.max()) >= n_seq):
        raise ValueError(f"seq_index must lie in [0, {n_seq}), got "
                         f"[{int(seq_index.min())}, {int(seq_index.max())}]")
    denom = float(max(n_seq, 1) if denominator is None else denominator)
    if not denom > 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")
    coef = torch.full(seq_index.shape, 1.0 / denom, dtype=torch.float32, device=seq_index.device)
    if length_norm:
        counts = torch.bincount(seq_index[mask], minlength=max(n_seq, 1)).clamp(min=1)
        coef = coef / counts[seq_index].float()
    return coef.masked_fill(~mask, 0.0)


def distill_loss(student: Tensor, targets: Targets, weight: Tensor | None, seq_index: Tensor,
                 n_seq: int, *, mask: Tensor | None = None, divergence: str = "reverse_kl",
                 length_norm: bool = True, denominator: float | None = None,
                 chunk_tokens: int = 1024, head_weight: Tensor | None = None,
                 vocab_size: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """AlignDistil loss (Eq. 18-19), see the module docstring.

    Args:
        student: [N, V_s] logits, or [N, H] final hidden states when ``head_weight`` is given.
        targets: Dense / TopK / Live targets for the same N rows.
        weight: [N] w_t = beta0 / alpha_t; None for LiveTargets (taken from the composition; a given
            weight overrides it). Use ones for an unweighted KL.
        seq_index: [N] long, sequence of each row, in [0, n_seq).
        n_seq: number of sequences in this (micro-)batch.
        mask: [N] bool, rows to use (default all).
        divergence: "reverse_kl" = KL(pi_theta || pi*) (the method) or "forward_kl" = KL(pi* || pi_theta).
        length_norm: divide each sequence's sum by its token count (paper 1/|y|); else sum.
        denominator: divisor of the sum of sequence losses; default n_seq (mean over sequences).
            1.0 returns the sum of per-sequence losses ("loss_sum"); for gradient accumulation pass
            the global batch's sequence count to each micro-batch and sum the losses.
        chunk_tokens: rows per chunk (extra memory ~ a few chunk x V fp32 tensors).
        head_weight: [V_head, H] lm_head weight (fused path); its first V rows are used.
        vocab_size: V, needed only for TopKTargets with a student wider than the shared vocabulary.
    Returns:
        (loss fp32 scalar, detached metrics: "kl" token-mean KL, "weighted_kl" token-mean w KL,
        "mean_weight", "n_tokens", and for live targets "mean_alpha", "mean_tvd").
    """
    if divergence not in DIVERGENCES:
        raise AlignDistilError(f"unknown divergence {divergence!r}", f"use one of {', '.join(DIVERGENCES)}")
    if weight is None and not isinstance(targets, LiveTargets):
        raise ValueError("weight is required for cached targets (ones for an unweighted KL)")
    if chunk_tokens < 1:
        raise AlignDistilError(f"chunk size must be >= 1, got {chunk_tokens}", "pass a positive chunk")
    if mask is None:
        mask = torch.ones(seq_index.shape, dtype=torch.bool, device=seq_index.device)
    mask = mask.bool()
    vocab = _resolve_vocab(student, targets, head_weight, vocab_size)
    plan = _Plan(targets, weight, _row_coef(seq_index, mask, n_seq, length_norm, denominator),
                 mask, divergence, chunk_tokens)
    need_grad = torch.is_grad_enabled() and (student.requires_grad or (
        head_weight is not None and head_weight.requires_grad))
    source = _HeadStudent if head_weight is not None else _LogitsStudent
    src = source(student, head_weight, vocab, need_grad)
    if need_grad:
        stats: dict[str, Tensor] = {}
        loss = _FusedDistill.apply(plan, src, stats, student, head_weight)
    else:
        loss, stats = plan.run(src, need_grad=False)
    return loss, _metrics(stats, mask)


def _metrics(sums: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    """Token means of the summed metrics (detached)."""
    n = mask.sum()
    names = {"kl": "kl", "weighted_kl": "weighted_kl", "weight": "mean_weight",
             "alpha": "mean_alpha", "tvd": "mean_tvd"}
    out = {names[k]: (v / n.clamp(min=1)).detach() for k, v in sums.items()}
    out["n_tokens"] = n.detach()
    return out
