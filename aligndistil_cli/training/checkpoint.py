"""Resumable checkpoints: ``checkpoint-N/`` folders written atomically.

A checkpoint is a loadable Hugging Face model folder (so ``evaluate --model run/checkpoint-20``
works) plus everything needed to continue bitwise: ``optimizer.pt`` (our own file, read back
with ``torch.load(weights_only=True)``), ``rng_state.safetensors`` and ``trainer_state.json``
(step, data position, scheduler, metrics so far). The folder is assembled under a temporary
name and renamed, so any ``checkpoint-N`` that exists is complete.

An FSDP run writes the same files (full weights, the optimizer state in the plain layout; see
``training.fsdp``), so any checkpoint resumes with or without FSDP and with any process count.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import TMP_PREFIX, atomic_path
from aligndistil_cli.training import fsdp

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPONENTS = ("config.json", "optimizer.pt", "trainer_state.json", "rng_state.safetensors")


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(state) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(folder: Path, model, tokenizer, optimizer_state: dict[str, Any],
                    trainer_state: dict[str, Any]) -> Path:
    """Write ``folder`` atomically. Refuses non-finite weights (they would poison a resume).

    ``model`` is an unsharded model; ``optimizer_state`` is in ``optimizer.state_dict()`` layout.
    """
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise RuntimeError(f"refusing to checkpoint non-finite weights ({name})")
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        save_file(rng_state(), str(tmp / "rng_state.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "complete": True}, indent=2))
    return folder


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporaries never match the name)."""
    if not Path(run_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    if not keep or keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _weights_file(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = set(json.loads(index.read_text())["weight_map"].values())
        return [folder / n for n in sorted(names)]
    return []


def load_checkpoint(folder: Path, model, optimizer) -> dict[str, Any]:
    """Restore model weights, optimizer and RNG; return the trainer state.

    Every component must be present: a missing one is named and nothing is reinitialised.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.name.startswith(TMP_PREFIX):
        raise AlignDistilError(f"checkpoint {folder} does not exist", "pass a checkpoint-N folder of this run")
    missing = [c for c in COMPONENTS if not (folder / c).is_file()]
    weights = _weights_file(folder)
    if not weights:
        missing.insert(0, "model.safetensors")
    if missing:
        raise AlignDistilError(f"checkpoint {folder} lacks {', '.join(missing)}",
                               "resume from another checkpoint-N, or start without --resume")
    state = json.loads((folder / "trainer_state.json").read_text())
    if not state.get("complete"):
        raise AlignDistilError(f"checkpoint {folder} is incomplete", "resume from an earlier checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for f in weights:
        tensors.update(load_file(str(f)))
    sharded = fsdp.is_sharded(model)  # then every rank reads the full files and keeps its shard
    result = fsdp.load_full_weights(model, tensors) if sharded else model.load_state_dict(tensors, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing_keys = [k for k in result.missing_keys if not (tied and k.startswith("lm_head."))]
    if missing_keys or result.unexpected_keys:
        raise AlignDistilError(
            f"checkpoint {folder} does not match the model (missing {missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})", "resume with the same --model as the run")
    optim_state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    if sharded:
        fsdp.load_full_optimizer(model, optimizer, optim_state)
    else:
        optimizer.load_state_dict(optim_state)
    set_rng_state(load_file(str(folder / "rng_state.safetensors")))
    return state
