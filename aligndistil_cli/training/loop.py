"""The one training loop shared by train-dpo, train-reverse-dpo and distill.

Read top to bottom: ``TrainLoop.run`` builds the optimizer and schedule, restores a checkpoint
when resuming, then for each optimizer step takes the step's global batch from a seeded
permutation, splits it across ranks and micro-batches, accumulates gradients, all-reduces
(FSDP: reduce-scatters inside backward), clips, steps, logs and checkpoints.

Assumptions worth knowing:
- ``batch_size`` is the global batch (sequences or pairs per optimizer step) =
  micro-batch x accumulation x processes. Every example of a global batch has equal weight:
  each micro-batch contributes ``sum of per-example losses / global batch size``, so 1 x 4 and
  4 x 1 accumulate the same gradient (up to float summation order).
- The data order of epoch ``e`` is ``randperm(n, seed + e)``; the position in it is the step
  number, so a checkpoint needs only the step to continue the exact order, with any process count.
- The last global batch of an epoch may be smaller (no example is dropped).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import append_jsonl
from aligndistil_cli.training import checkpoint as ckpt
from aligndistil_cli.training import fsdp
from aligndistil_cli.training.distributed import DistInfo, all_reduce_grads, all_reduce_sum
from aligndistil_cli.training.progress import Reporter
from aligndistil_cli.training.schedule import build_scheduler
from aligndistil_cli.training.signals import StopFlag


class Interrupted(Exception):
    """Raised after a checkpoint was saved because SIGTERM/SIGINT arrived."""

    def __init__(self, exit_code: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint at {checkpoint}")
        self.exit_code = exit_code
        self.checkpoint = checkpoint


class NonFiniteError(AlignDistilError):
    exit_code = 3


@dataclass
class MicroOutput:
    """What a task returns for one micro-batch.

    Attributes:
        loss_sum: scalar, the SUM over the micro-batch's examples of their losses (with grad).
        metrics: name -> (sum, weight); logged as sum/weight aggregated over the global batch.
        n_tokens: tokens processed (for tokens per second).
    """

    loss_sum: torch.Tensor
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_tokens: int = 0


class Task(Protocol):
    """A training objective over an indexable dataset of examples."""

    def __len__(self) -> int: ...

    def example_ids(self, indices: list[int]) -> list[Any]: ...

    def micro_step(self, model: torch.nn.Module, indices: list[int]) -> MicroOutput: ...


@dataclass(frozen=True)
class LoopSettings:
    output_dir: Path
    batch_size: int = 128
    micro_batch_size: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-6
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 0
    save_total_limit: int | None = None
    on_nonfinite: str = "error"
    resume_from: Path | None = None
    # Called once per optimizer step (after the update) with the step number: on-policy
    # distillation samples its next rollout here.
    after_step: Callable[[int], None] | None = None


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def total_steps(n_examples: int, s: LoopSettings) -> int:
    if s.max_steps:
        return s.max_steps
    return max(1, math.ceil(s.epochs * steps_per_epoch(n_examples, s.batch_size)))


def global_batch(step: int, n_examples: int, s: LoopSettings) -> list[int]:
    """Example indices of optimizer step ``step`` (0-based)."""
    spe = steps_per_epoch(n_examples, s.batch_size)
    epoch, pos = divmod(step, spe)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(s.seed + epoch))
    return order[pos * s.batch_size: (pos + 1) * s.batch_size].tolist()


class TrainLoop:
    """Runs a ``Task`` on ``model``; see the module docstring for the contract."""

    def __init__(self, model: torch.nn.Module, tokenizer, task: Task, settings: LoopSettings,
                 dist: DistInfo, reporter: Reporter) -> None:
        self.model, self.tokenizer, self.task, self.s = model, tokenizer, task, settings
        self.dist, self.reporter = dist, reporter
        self.sharded = fsdp.is_sharded(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=settings.adam_betas,
                                           weight_decay=settings.weight_decay)
        self.total = total_steps(len(task), settings)
        self.scheduler = build_scheduler(self.optimizer, self.total, settings.warmup_ratio,
                                         settings.lr_scheduler, settings.min_lr_ratio)
        self.step = 0
        self.skipped = 0
        self.metrics_path = Path(settings.output_dir) / "metrics.jsonl"
        self.last_metrics: dict[str, Any] = {}

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        Path(self.s.output_dir).mkdir(parents=True, exist_ok=True)
        if self.s.resume_from is not None:
            self._resume(Path(self.s.resume_from))
        elif self.dist.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run starts a fresh log
        self.model.train()
        self.reporter.start(self.total, self.step)
        try:
            with StopFlag() as stop:
                while self.step < self.total:
                    metrics = self._optimizer_step()
                    self.step += 1
                    self._log(metrics)
                    if self.s.after_step is not None:
                        self.s.after_step(self.step)
                    # every rank stops at the same step: checkpointing is a collective
                    if not self._agree(not stop.requested):
                        path = self._save_checkpoint()
                        raise Interrupted(stop.exit_code if stop.requested else 143, path)
                    if self.s.save_steps and self.step % self.s.save_steps == 0 and self.step < self.total:
                        self._save_checkpoint()
        finally:
            self.reporter.stop()
        self.model.eval()
        return {**self.last_metrics, "steps": self.step, "skipped_steps": self.skipped}

    def _optimizer_step(self) -> dict[str, Any]:
        t0 = time.time()
        if hasattr(self.task, "begin_step"):  # on-policy tasks sample per optimizer step
            self.task.begin_step(self.step)
        batch = global_batch(self.step, len(self.task), self.s)
        mine = batch[self.dist.rank:: self.dist.world_size]
        sums: dict[str, list[float]] = {}
        loss_total, n_tokens, finite = 0.0, 0, True
        for micro, weight in self._micro_batches(batch, mine):
            out = self.task.micro_step(self.model, micro)
            if not torch.isfinite(out.loss_sum.detach()):
                finite = False
                if not self.sharded:  # FSDP ranks must run every backward (it reduce-scatters)
                    break
            (out.loss_sum / len(batch) * weight).backward()
            if not (weight and finite):
                continue
            loss_total += float(out.loss_sum.detach())
            n_tokens += out.n_tokens
            for k, (v, w) in out.metrics.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += float(v)
                acc[1] += float(w)
        finite = self._agree(finite)
        grad_norm = float("nan")
        if finite:
            if not self.sharded:  # FSDP already summed (reduce-scattered) the gradients
                all_reduce_grads(self.params, self.dist)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.s.max_grad_norm)
            grad_norm = float(fsdp.full_value(norm))
            finite = self._agree(math.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        else:
            self._handle_nonfinite(batch)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return self._reduce_metrics(loss_total, len(batch), sums, n_tokens, time.time() - t0,
                                    grad_norm, lr)

    # -- helpers ----------------------------------------------------------------------------
    def _micro_batches(self, batch: list[int], mine: list[int]) -> list[tuple[list[int], float]]:
        """(indices, weight) per micro-batch of this rank.

        Under FSDP every forward and backward is a collective, so each rank runs as many
        micro-batches as rank 0 (which holds the most); a rank short of examples repeats the
        batch's first example with weight 0 (no gradient, not counted in the metrics).
        """
        mb = self.s.micro_batch_size
        micros = [(mine[i: i + mb], 1.0) for i in range(0, len(mine), mb)]
        if self.sharded:
            needed = math.ceil(len(batch[:: self.dist.world_size]) / mb)
            micros += [(batch[:1], 0.0)] * (needed - len(micros))
        return micros

    def _agree(self, ok: bool) -> bool:
        """All ranks must take the same branch: a step is finite only if finite everywhere."""
        flag = all_reduce_sum(torch.tensor([0.0 if ok else 1.0]), self.dist)
        return float(flag) == 0.0

    def _handle_nonfinite(self, batch: list[int]) -> None:
        ids = self.task.example_ids(batch)
        shown = ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")
        if self.s.on_nonfinite == "skip":
            self.skipped += 1
            return
        raise NonFiniteError(
            f"non-finite loss or gradient at step {self.step + 1} (examples {shown})",
            "lower --lr, check these rows, or pass --on-nonfinite skip to skip such batches")

    def _reduce_metrics(self, loss_total: float, n_batch: int, sums: dict[str, list[float]],
                        n_tokens: int, seconds: float, grad_norm: float, lr: float) -> dict[str, Any]:
        keys = sorted(sums)
        packed = torch.tensor([loss_total, float(n_tokens)] + [x for k in keys for x in sums[k]],
                              dtype=torch.float64)
        packed = all_reduce_sum(packed, self.dist)
        metrics: dict[str, Any] = {"step": self.step + 1, "loss": float(packed[0]) / n_batch}
        for j, k in enumerate(keys):
            s, w = float(packed[2 + 2 * j]), float(packed[3 + 2 * j])
            metrics[k] = s / w if w else float("nan")
        metrics.update({"lr": lr, "grad_norm": grad_norm, "tokens": int(packed[1]),
                        "tokens_per_sec": float(packed[1]) / max(seconds, 1e-9),
                        "epoch": (self.step + 1) / steps_per_epoch(len(self.task), self.s.batch_size),
                        "skipped_steps": self.skipped})
        return metrics

    def _log(self, metrics: dict[str, Any]) -> None:
        self.last_metrics = metrics
        if self.dist.is_main and (self.step % self.s.logging_steps == 0 or self.step == self.total):
            append_jsonl(self.metrics_path, metrics)
            self.reporter.update(self.step, metrics)

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total, "n_examples": len(self.task),
                "batch_size": self.s.batch_size, "seed": self.s.seed, "skipped_steps": self.skipped,
                "scheduler": self.scheduler.state_dict(), "last_metrics": self.last_metrics}

    def _save_checkpoint(self) -> Path | None:
        path = Path(self.s.output_dir) / f"checkpoint-{self.step}"
        if self.sharded:  # gathering the full state is a collective: every rank takes part
            weights = fsdp.full_model_state(self.model)
            optim_state = fsdp.full_optimizer_state(self.model, self.optimizer)
            model = fsdp.plain_copy(self.model, weights) if self.dist.is_main else None
        else:
            model, optim_state = self.model, self.optimizer.state_dict()
        if self.dist.is_main:
            ckpt.save_checkpoint(path, model, self.tokenizer, optim_state, self._trainer_state())
            ckpt.prune_checkpoints(Path(self.s.output_dir), self.s.save_total_limit)
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def _resume(self, folder: Path) -> None:
        state = ckpt.load_checkpoint(folder, self.model, self.optimizer)
        for key in ("n_examples", "batch_size", "seed"):
            mine = {"n_examples": len(self.task), "batch_size": self.s.batch_size, "seed": self.s.seed}[key]
            if state.get(key) != mine:
                raise AlignDistilError(
                    f"cannot resume from {folder}: it was trained with {key}={state.get(key)}, now {mine}",
                    f"resume with the run's original data and --{key.replace('_', '-')}")
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.skipped = int(state["step"]), int(state.get("skipped_steps", 0))
        self.last_metrics = state.get("last_metrics", {})
        if self.dist.is_main and self.metrics_path.exists():
            _truncate_metrics(self.metrics_path, self.step)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    import json

    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept))
