"""Losses: the AlignDistil distillation loss (chunked, fused with the lm_head)."""

from aligndistil_cli.losses.distill import (
    DIVERGENCES,
    DenseTargets,
    LiveTargets,
    Targets,
    TopKTargets,
    distill_loss,
    seq_index_from_mask,
)

__all__ = ["DIVERGENCES", "DenseTargets", "LiveTargets", "Targets", "TopKTargets", "distill_loss",
           "seq_index_from_mask"]
