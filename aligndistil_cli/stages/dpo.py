"""train-dpo and train-reverse-dpo: DPO from the reference policy on preference pairs.

train-reverse-dpo is the same stage with chosen and rejected swapped inside the stage (it gives
pi_rev, the "reverse DPO" model of AlignDistil Eq. 12); its run record says ``"reversed": true``.

Order: load data and tokenizer -> validate rows -> load policy (and reference, or precompute the
reference log-probs once and free it) -> TrainLoop -> save the model folder -> run record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aligndistil_cli.batching import make_batch, response_logps
from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.losses.dpo import PREFERENCE_LOSSES, preference_loss
from aligndistil_cli.models import autocast
from aligndistil_cli.stages.options import DataOptions, ModelOptions, TrainOptions
from aligndistil_cli.stages.runner import StageContext, run_stage
from aligndistil_cli.training.loop import LoopSettings, MicroOutput, TrainLoop


@dataclass(frozen=True)
class DPOConfig(TrainOptions, DataOptions, ModelOptions):
    """DPO (Rafailov et al. 2023) from --model on --data; the reference is a frozen copy of
    --model unless --reference is given. Defaults follow the official AlignDistil recipe."""

    model: str = option(help="Starting policy: a Hugging Face model folder or hub id.", group="Model")
    output: str = option(help="Output folder (a Hugging Face model folder plus run record).", group="Run")
    reference: str | None = option(None, "Reference model (default: a frozen copy of --model).", group="Model")
    beta: float = option(0.1, "DPO beta (IPO tau).", group="Loss")
    loss_type: str = option("sigmoid", "sigmoid = DPO/cDPO, ipo = IPO.", choices=tuple(PREFERENCE_LOSSES),
                            group="Loss")
    label_smoothing: float = option(0.0, "cDPO label-flip probability (sigmoid loss).", group="Loss")
    precompute_reference: bool = option(False, "Compute reference log-probs once, cache them in --output "
                                        "and free the reference model.", group="Loss")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise AlignDistilError("--beta must be positive", "pass e.g. --beta 0.1")
        if not 0 <= self.label_smoothing < 0.5:
            raise AlignDistilError("--label-smoothing must lie in [0, 0.5)", "pass e.g. --label-smoothing 0.1")


class DPOTask:
    """Per micro-batch: policy (and reference) log-probs of chosen and rejected -> DPO loss."""

    def __init__(self, pairs: list, cfg: DPOConfig, pad_id: int, vocab_size: int, device: torch.device,
                 reference: torch.nn.Module | None, ref_logps: torch.Tensor | None) -> None:
        self.pairs, self.cfg, self.pad_id, self.vocab, self.device = pairs, cfg, pad_id, vocab_size, device
        self.reference, self.ref_logps = reference, ref_logps

    def __len__(self) -> int:
        return len(self.pairs)

    def example_ids(self, indices: list[int]) -> list[Any]:
        return [self.pairs[i].row_id for i in indices]

    def batch(self, indices: list[int]):
        ex = [self.pairs[i] for i in indices]
        prompts = [e.prompt_ids for e in ex] * 2
        responses = [e.chosen_ids for e in ex] + [e.rejected_ids for e in ex]
        return make_batch(prompts, responses, self.pad_id).to(self.device)

    def micro_step(self, model: torch.nn.Module, indices: list[int]) -> MicroOutput:
        batch = self.batch(indices)
        n = len(indices)
        with autocast(self.device, self.cfg.mixed_precision):
            logps = response_logps(model, batch, self.vocab)
        if self.ref_logps is not None:
            ref = self.ref_logps[indices].to(self.device)
        else:
            with torch.no_grad(), autocast(self.device, self.cfg.mixed_precision):
                ref = response_logps(self.reference, batch, self.vocab)
            ref = ref.view(2, n).T
        out = preference_loss(logps[:n], logps[n:], ref[:, 0], ref[:, 1], beta=self.cfg.beta,
                              loss_type=self.cfg.loss_type, label_smoothing=self.cfg.label_smoothing)
        margins = out.chosen_rewards - out.rejected_rewards
        metrics = {
            "rewards/chosen": (float(out.chosen_rewards.sum()), n),
            "rewards/rejected": (float(out.rejected_rewards.sum()), n),
            "rewards/margins": (float(margins.sum()), n),
            "rewards/accuracies": (float((margins > 0).float().sum()), n),
            "logps/chosen": (float(logps[:n].detach().sum()), n),
            "logps/rejected": (float(logps[n:].detach().sum()), n),
        }
        return MicroOutput(out.losses.sum(), metrics, int(batch.attention_mask.sum()))


def loop_settings(cfg: TrainOptions, output: Path, resume_from: Path | None, **extra) -> LoopSettings:
    return LoopSettings(
        output_dir=output, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size,
        epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, lr_scheduler=cfg.lr_scheduler,
        warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        on_nonfinite=cfg.on_nonfinite, resume_from=resume_from, **extra)


def run_dpo(cfg: DPOConfig, *, reversed_pairs: bool = False) -> dict[str, Any]:
    """Train DPO (or reverse DPO) and write the model folder; returns the final metrics."""
    from aligndistil_cli.stages import common

    stage = "train-reverse-dpo" if reversed_pairs else "train-dpo"
    if cfg.dry_run:
        return common.dry_run(cfg, stage, models=[cfg.model] + ([cfg.reference] if cfg.reference else []),
                              data=cfg.data)

    def body(ctx: StageContext) -> dict[str, Any]:
        tokenizer = common.load_tokenizer_for(cfg, cfg.model)
        pairs, data_fp = common.load_pairs(cfg, tokenizer, swap=reversed_pairs, console=ctx.dist.is_main)
        policy = common.load_trainable(cfg, cfg.model, ctx.device)
        ref_path = cfg.reference or cfg.model
        reference = common.load_frozen(cfg, ref_path, ctx.device)
        vocab = common.shared_vocab(tokenizer, student=policy, reference=reference)
        ctx.record.inputs.update({"model": common.fingerprint_input(cfg.model),
                                  "reference": common.fingerprint_input(ref_path), "data": data_fp,
                                  "n_pairs": len(pairs)})
        ref_logps = None
        if cfg.precompute_reference:
            ref_logps = common.reference_logps_cache(ctx, cfg, reference, pairs, tokenizer.pad_token_id,
                                                     vocab, key_parts=(ctx.record.inputs["reference"], data_fp))
            reference = None  # freed: the cache replaces it
        task = DPOTask(pairs, cfg, tokenizer.pad_token_id, vocab, ctx.device, reference, ref_logps)
        policy = common.shard_trainable(cfg, ctx, policy)
        loop = TrainLoop(policy, tokenizer, task, loop_settings(cfg, ctx.output, ctx.resume_from), ctx.dist,
                         common.reporter(stage, ctx))
        metrics = loop.run()
        common.save_final_model(ctx, policy, tokenizer)
        return metrics

    return run_stage(stage, cfg, cfg.output, body, extra={"reversed": reversed_pairs})
