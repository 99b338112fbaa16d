"""What every stage does around its own work: output folder checks, the saved config, the run
record with its status, seeding, device and process-group set-up."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from aligndistil_cli.config import StageConfig
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import clean_stale_temporaries
from aligndistil_cli.runrecord import RunRecord, prepare_output
from aligndistil_cli.training import checkpoint as ckpt
from aligndistil_cli.training.distributed import DistInfo, init_distributed
from aligndistil_cli.training.loop import Interrupted


@dataclass
class StageContext:
    output: Path
    record: RunRecord
    dist: DistInfo
    device: torch.device
    resume_from: Path | None = None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def resolve_resume(cfg: StageConfig, output: Path) -> Path | None:
    if getattr(cfg, "resume_from", None):
        return Path(cfg.resume_from)
    if getattr(cfg, "resume", False):
        latest = ckpt.latest_checkpoint(output)
        if latest is None:
            raise AlignDistilError(f"--resume: {output} holds no complete checkpoint",
                                   "start without --resume, or pass --resume-from DIR")
        return latest
    return None


def run_stage(stage: str, cfg: StageConfig, output: str | Path,
              body: Callable[[StageContext], dict[str, Any]], *, inputs: dict | None = None,
              extra: dict | None = None) -> dict[str, Any]:
    """Run ``body`` with the record written as running -> complete | interrupted | failed."""
    from aligndistil_cli.models import resolve_device

    device = resolve_device(getattr(cfg, "device", "auto"))
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    output = Path(output)
    resuming = bool(getattr(cfg, "resume", False) or getattr(cfg, "resume_from", None))
    if dist.is_main:
        prepare_output(output, stage, overwrite=getattr(cfg, "overwrite", False), resume=resuming)
        clean_stale_temporaries(output)
        cfg.save(output)
    record = RunRecord(output, stage, cfg.to_dict(), inputs=dict(inputs or {}), extra=dict(extra or {}))
    record.extra.setdefault("seed", getattr(cfg, "seed", None))
    record.extra["world_size"] = dist.world_size
    ctx = StageContext(output, record, dist, device, resolve_resume(cfg, output) if resuming else None)
    seed_everything(getattr(cfg, "seed", 0), getattr(cfg, "deterministic", False))
    write = record.write if dist.is_main else (lambda *a, **k: None)
    write("running")
    try:
        metrics = body(ctx)
    except Interrupted:
        write("interrupted")
        raise
    except BaseException:
        write("failed")
        raise
    write("complete", metrics)
    shutdown_distributed(dist)
    return metrics


def shutdown_distributed(dist: DistInfo) -> None:
    """Leave the process group cleanly: gloo/NCCL threads torn down at interpreter exit abort."""
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
