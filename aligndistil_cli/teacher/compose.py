"""The AlignDistil teacher: contrastive, token-adaptive logit extrapolation (paper §3-4).

One formulation covers the method and its ablations. Per response position (a row):

    z*  = z_base + alpha * (z_dpo - z_neg)          teacher logits (Eq. 11, 15, 17)
    pi* = softmax(z*) over the shared vocabulary V   teacher distribution
    w   = beta / alpha                               per-token KL weight beta_t (Eq. 17-18)

where ``beta`` is the DPO coefficient beta0 used to train the DPO models (0.1) and

- contrast ``"reverse"``: base = DPO model, neg = *reverse DPO* model, i.e. a DPO model trained
  from the reference model on the swapped pairs (chosen <-> rejected) (Eq. 12-15);
- contrast ``"reference"``: base = neg = reference (initial) model (Theorem 1, Eq. 10-11:
  z* = alpha z_dpo + (1 - alpha) z_ref with the constant alpha = beta0 / beta);
- alpha ``adaptive``: alpha_t = alpha_max * TVD_t + eps, TVD_t = 1/2 sum_v |p_dpo(v) - p_neg(v)|
  in [0, 1] (Eq. 16). ``alpha_max`` = 2 * the official code's ``--beta2`` because the code sums
  |p - q| without the 1/2 (method.md §8.1), so alpha_max = 20 reproduces ``--beta2 10``;
- alpha constant (a float): the paper's beta0/beta ablation (Table 3).

Variant names and the official ``--reward_boost_type`` they reproduce:

=============  ===========  ========  ==========================
variant        contrast     alpha     official reward_boost_type
=============  ===========  ========  ==========================
aligndistil    reverse      adaptive  aligndistil
contrastive    reverse      constant  theorem1_contrast
adaptive       reference    adaptive  theorem1_adaptive
theorem1       reference    constant  theorem1
=============  ===========  ========  ==========================

(For ``theorem1*`` the official loss weight is ``--beta2`` = beta, and alpha = beta0 / beta, so
w = beta0 / alpha = beta: the same numbers.)

All math is fp32 whatever the input dtype. Logits may be given as tensors ``[N, V]`` or as
:class:`HeadLogits` (final hidden states + lm_head), which are turned into logits one chunk of rows
at a time, so no ``[N, V]`` tensor is needed for the teacher models either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Union

import torch
from torch import Tensor

from aligndistil_cli.errors import AlignDistilError

#: variant name -> (contrast, alpha mode); see the module docstring for the official names.
VARIANTS: dict[str, tuple[str, str]] = {
    "aligndistil": ("reverse", "adaptive"),
    "contrastive": ("reverse", "constant"),
    "adaptive": ("reference", "adaptive"),
    "theorem1": ("reference", "constant"),
}

#: variant name -> the official repository's ``--reward_boost_type``.
OFFICIAL_NAMES: dict[str, str] = {
    "aligndistil": "aligndistil",
    "contrastive": "theorem1_contrast",
    "adaptive": "theorem1_adaptive",
    "theorem1": "theorem1",
}

#: contrast -> which of (z_dpo, z_neg) is the extrapolation base when z_base is not given.
#: reverse: base = DPO model (Eq. 15); reference: base = neg = reference model (Eq. 11).
_DEFAULT_BASE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "reverse": lambda z_dpo, z_neg: z_dpo,
    "reference": lambda z_dpo, z_neg: z_neg,
}


@dataclass(frozen=True)
class TeacherSpec:
    """How the teacher is composed.

    Attributes:
        contrast: ``"reverse"`` (neg = reverse-DPO model) or ``"reference"`` (neg = reference model).
        alpha: None for the token-adaptive alpha_t (Eq. 16); a float for a constant alpha.
        alpha_max: r in Eq. 16 under the paper's TVD (with the 1/2); = 2 * official ``--beta2``.
        eps: the floor of alpha_t (Eq. 16), 1e-3.
        beta: beta0, the DPO coefficient the DPO models were trained with.
    """

    contrast: str = "reverse"
    alpha: float | None = None
    alpha_max: float = 20.0
    eps: float = 1e-3
    beta: float = 0.1

    def __post_init__(self) -> None:
        if self.contrast not in _DEFAULT_BASE:
            raise AlignDistilError(f"unknown teacher contrast {self.contrast!r}",
                                   f"use one of {', '.join(_DEFAULT_BASE)}")
        if self.alpha is not None and not self.alpha > 0:
            raise AlignDistilError(f"constant alpha must be > 0, got {self.alpha}",
                                   "alpha is beta0/beta in the paper's ablation, e.g. 1.0")
        if not (self.eps > 0 and self.alpha_max >= 0 and self.beta > 0):
            raise AlignDistilError(
                f"invalid teacher spec: eps={self.eps}, alpha_max={self.alpha_max}, beta={self.beta}",
                "need eps > 0, alpha_max >= 0 and beta > 0")

    @property
    def adaptive(self) -> bool:
        return self.alpha is None

    @classmethod
    def from_variant(cls, variant: str, *, alpha: float | None = None, alpha_max: float = 20.0,
                     beta: float = 0.1, eps: float = 1e-3) -> "TeacherSpec":
        """Spec of a named variant (:data:`VARIANTS`).

        Constant variants use ``alpha`` (1.0 when None). For adaptive variants a given ``alpha``
        overrides the adaptive rule with that constant.
        """
        if variant not in VARIANTS:
            raise AlignDistilError(f"unknown teacher variant {variant!r}",
                                   f"use one of {', '.join(VARIANTS)}")
        contrast, mode = VARIANTS[variant]
        if mode == "constant" and alpha is None:
            alpha = 1.0
        return cls(contrast=contrast, alpha=alpha, alpha_max=alpha_max, eps=eps, beta=beta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherRows:
    """The composed teacher for N positions, all fp32.

    Attributes:
        logprobs: [N, V] teacher log-probs log pi* (normalized over V).
        alpha: [N] extrapolation weight alpha_t.
        tvd: [N] 1/2 sum_v |p_dpo - p_neg| in [0, 1] (computed for constant alpha too, diagnostics).
        weight: [N] loss weight beta / alpha_t.
    """

    logprobs: Tensor
    alpha: Tensor
    tvd: Tensor
    weight: Tensor


@dataclass(frozen=True)
class HeadLogits:
    """Logits given implicitly as ``hidden @ weight[:vocab_size].T``, computed per chunk of rows.

    Attributes:
        hidden: [N, H] final hidden states (after the final norm) of the response positions.
        weight: [V_head, H] lm_head weight; only the first ``vocab_size`` rows (the shared vocabulary)
            are used.
        vocab_size: V; None uses all rows.
    """

    hidden: Tensor
    weight: Tensor
    vocab_size: int | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @property
    def n_vocab(self) -> int:
        return self.vocab_size or self.weight.shape[0]

    def rows(self, sl: slice) -> Tensor:
        """fp32 logits [c, V] of rows ``sl``; the matmul runs in the input dtype (like the model's
        own lm_head, fp32 accumulation on GPU; the wider one when hidden and weight differ, e.g.
        bf16 autocast activations with fp32 weights) and is upcast after."""
        dtype = torch.promote_types(self.hidden.dtype, self.weight.dtype)
        return (self.hidden[sl].to(dtype) @ self.weight[: self.n_vocab].to(dtype).t()).float()


Logits = Union[Tensor, HeadLogits]


def logit_rows(z: Logits, sl: slice) -> Tensor:
    """fp32 logits [c, V] of rows ``sl`` of a tensor [N, V] or a :class:`HeadLogits`."""
    return z.rows(sl) if isinstance(z, HeadLogits) else z[sl].float()


def n_vocab(z: Logits) -> int:
    return z.n_vocab if isinstance(z, HeadLogits) else z.shape[-1]


def _tvd(z_dpo: Tensor, z_neg: Tensor) -> Tensor:
    """1/2 sum_v |softmax(z_dpo) - softmax(z_neg)|: [c] fp32 (Eq. 16, paper convention)."""
    return 0.5 * (torch.softmax(z_dpo, -1) - torch.softmax(z_neg, -1)).abs().sum(-1)


def compose_teacher(z_dpo: Tensor, z_neg: Tensor, spec: TeacherSpec,
                    z_base: Tensor | None = None) -> TeacherRows:
    """Compose the teacher for N positions (Eq. 11, 15-17).

    Args:
        z_dpo: [N, V] DPO-model logits (any float dtype).
        z_neg: [N, V] reverse-DPO logits (contrast "reverse") or reference logits ("reference").
        spec: the variant.
        z_base: [N, V] extrapolation base; None picks it from ``spec.contrast`` (z_dpo for
            "reverse", z_neg = reference for "reference").
    Returns:
        :class:`TeacherRows`, fp32, no grad.
    """
    with torch.no_grad():
        z_dpo, z_neg = z_dpo.float(), z_neg.float()
        base = _DEFAULT_BASE[spec.contrast](z_dpo, z_neg) if z_base is None else z_base.float()
        tvd = _tvd(z_dpo, z_neg)
        alpha = spec.alpha_max * tvd + spec.eps if spec.adaptive else torch.full_like(tvd, spec.alpha)
        logprobs = torch.log_softmax(base + alpha[:, None] * (z_dpo - z_neg), dim=-1)
        return TeacherRows(logprobs=logprobs, alpha=alpha, tvd=tvd, weight=spec.beta / alpha)


def token_reward(z_dpo: Tensor, z_neg: Tensor, next_ids: Tensor, beta: float) -> Tensor:
    """Token reward of the actual next token: beta * (log p_dpo(y) - log p_neg(y)) (Eq. 6, 12).

    Args:
        z_dpo, z_neg: [N, V] logits. next_ids: [N] token ids y_t.
    Returns:
        [N] fp32.
    """
    with torch.no_grad():
        idx = next_ids.long()[:, None]

        def logp(z: Tensor) -> Tensor:  # gather before normalising: no [N, V] log-prob tensor
            z = z.float()
            return z.gather(-1, idx).squeeze(-1) - torch.logsumexp(z, -1)

        return beta * (logp(z_dpo) - logp(z_neg))


def expected_reward(student_logprobs: Tensor, z_dpo: Tensor, z_neg: Tensor, beta: float) -> Tensor:
    """Expected token reward under the student, sum_v pi_theta(v) beta (log p_dpo(v) - log p_neg(v)).

    Diagnostics only (the official code logs it). Args: student_logprobs, z_dpo, z_neg: [N, V].
    Returns: [N] fp32, no grad.
    """
    with torch.no_grad():
        ratio = torch.log_softmax(z_dpo.float(), -1) - torch.log_softmax(z_neg.float(), -1)
        return beta * (student_logprobs.float().exp() * ratio).sum(-1)


def topk_rows(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of teacher log-probs (what the teacher cache stores).

    Args:
        logprobs: [N, V]. k: number kept; clamped to V (tiny vocabularies).
    Returns:
        (ids int32 [N, k], values fp32 [N, k]), values sorted descending, still normalized over V.
    """
    if k < 1:
        raise AlignDistilError(f"top-k must be >= 1, got {k}", "pass a positive --top-k")
    values, ids = torch.topk(logprobs.float(), min(k, logprobs.shape[-1]), dim=-1)
    return ids.to(torch.int32), values


def compose_chunked(z_dpo: Logits, z_neg: Logits, spec: TeacherSpec, z_base: Logits | None = None,
                    chunk_tokens: int = 1024,
                    fn: Callable[[TeacherRows, Tensor, Tensor], Any] | None = None
                    ) -> Iterator[tuple[slice, Any]]:
    """Compose the teacher ``chunk_tokens`` rows at a time; at most ~chunk x V fp32 values per tensor.

    Args:
        z_dpo, z_neg, z_base: [N, V] tensors or :class:`HeadLogits` (see :func:`compose_teacher`).
        chunk_tokens: rows per chunk.
        fn: called as ``fn(rows, z_dpo_chunk, z_neg_chunk)`` (fp32 [c, V] logits, e.g. for
            :func:`token_reward`); its result is yielded instead of the rows, so a caller can keep
            only ``topk_rows(rows.logprobs, k)`` and let the [c, V] tensors go.
    Yields:
        (slice of rows, TeacherRows or fn's result).
    """
    if chunk_tokens < 1:
        raise AlignDistilError(f"chunk size must be >= 1, got {chunk_tokens}", "pass a positive chunk")
    n = len(z_dpo)
    for start in range(0, n, chunk_tokens):
        sl = slice(start, min(n, start + chunk_tokens))
        zd, zn = logit_rows(z_dpo, sl), logit_rows(z_neg, sl)
        rows = compose_teacher(zd, zn, spec, None if z_base is None else logit_rows(z_base, sl))
        yield sl, (rows if fn is None else fn(rows, zd, zn))
