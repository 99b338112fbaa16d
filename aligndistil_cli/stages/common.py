"""Building blocks the stages share: loading, validation report, reference cache, saving."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import TMP_PREFIX, sha256_text
from aligndistil_cli.stages.runner import StageContext
from aligndistil_cli.training.distributed import barrier
from aligndistil_cli.training.progress import Reporter


def console():
    from rich.console import Console

    return Console(stderr=True)


def dry_run(cfg, stage: str, *, models: list[str], data: str | None = None, paths: list[str] = ()) -> dict:
    """Validate a stage's config without loading any model and print the resolved config.

    The config itself was already validated when it was built. Inputs that are neither local
    paths nor hub ids are errors; local inputs that do not exist yet are only reported, since
    in a recipe's dry run they are the outputs of earlier stages.
    """
    import yaml

    out = console()
    for m in [*models, data, *paths]:
        if m and not Path(m).exists():
            if m.count("/") == 1 and not m.startswith((".", "/")) and not Path(m).suffix:
                out.print(f"  {m}: hub id (not checked offline)")
            else:
                out.print(f"  [yellow]{m}: not there yet[/yellow] (an earlier stage's output?)")
    out.print(f"[bold]{stage}[/bold] dry run: config is valid\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return {"dry_run": True}


def load_tokenizer_for(cfg, path: str):
    from aligndistil_cli.models import load_tokenizer

    return load_tokenizer(path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)


def load_trainable(cfg, path: str, device: torch.device) -> torch.nn.Module:
    """The trained model keeps fp32 master weights (bf16 autocast per --mixed-precision)."""
    from aligndistil_cli.models import load_model

    model = load_model(path, dtype="float32", device=str(device), trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.revision, train=True)
    if getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def shard_trainable(cfg, ctx: StageContext, model: torch.nn.Module) -> torch.nn.Module:
    """--fsdp: shard the trained model with FSDP2 (``training.fsdp``) when several processes run;
    with one process there is nothing to shard, so the flag is a no-op with a note."""
    if not getattr(cfg, "fsdp", False):
        return model
    if not ctx.dist.enabled:
        console().print("[yellow]note:[/yellow] --fsdp shards across processes; with one process "
                        "it does nothing (launch with --nproc-per-node N or torchrun)")
        return model
    from aligndistil_cli.training import fsdp

    return fsdp.shard(model)


def load_frozen(cfg, path: str, device: torch.device) -> torch.nn.Module:
    """A frozen model (reference, DPO, negative). Under --fsdp it stays replicated on every rank:
    it is inference-only (no gradients or optimizer state to shard), and sharding it would add
    an all-gather per forward."""
    from aligndistil_cli.models import load_model

    model = load_model(path, dtype=cfg.dtype, device=str(device), trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.revision, train=False)
    model.requires_grad_(False)
    return model


def shared_vocab(tokenizer, **models: torch.nn.Module) -> int:
    from aligndistil_cli.models import shared_vocab_size

    size, notes = shared_vocab_size({k: v for k, v in models.items() if v is not None}, tokenizer)
    for note in notes:
        console().print(f"[yellow]note:[/yellow] {note}")
    return size


def check_tokenizers(cfg, named_paths: dict[str, str]) -> None:
    from aligndistil_cli.models import check_same_tokenizer

    notes = check_same_tokenizer({k: load_tokenizer_for(cfg, p) for k, p in named_paths.items()})
    for note in notes or []:
        console().print(f"[yellow]note:[/yellow] {note}")


def fingerprint_input(path: str) -> dict[str, str]:
    """Weight hash of a local folder (hub ids are named, not hashed); one hash per folder per run."""
    if Path(path).is_dir():
        return {"path": str(path), "sha256": _folder_hash(str(Path(path).resolve()))}
    return {"path": str(path), "sha256": "hub:" + str(path)}


@functools.lru_cache(maxsize=None)
def _folder_hash(folder: str) -> str:
    """sha256 of a model folder's weights; cached because a stage often names one folder twice
    (DPO: --model is also the reference) and hashing a checkpoint reads every byte."""
    from aligndistil_cli.models import weights_fingerprint

    return weights_fingerprint(folder)


def load_pairs(cfg, tokenizer, *, swap: bool, console: bool = True) -> tuple[list, str]:
    """Load, validate and tokenize preference pairs; ``swap`` exchanges chosen and rejected."""
    from aligndistil_cli.data import data_fingerprint, load_rows, prepare_pairs

    rows = load_rows(cfg.data, split=cfg.split)
    chosen_key, rejected_key = (cfg.rejected_key, cfg.chosen_key) if swap else (cfg.chosen_key, cfg.rejected_key)
    pairs, report = prepare_pairs(rows, tokenizer, prompt_key=cfg.prompt_key, chosen_key=chosen_key,
                                  rejected_key=rejected_key, max_length=cfg.max_length,
                                  max_prompt_length=cfg.max_prompt_length, on_invalid=cfg.on_invalid)
    show_report(report, console)
    if cfg.max_examples:
        pairs = pairs[: cfg.max_examples]
    if not pairs:
        raise AlignDistilError(f"no valid preference pairs in {cfg.data}",
                               "check --prompt-key/--chosen-key/--rejected-key and the validation table")
    fp = data_fingerprint(rows, prompt_key=cfg.prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                          max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                          max_examples=cfg.max_examples)
    return pairs, fp


def show_report(report, enabled: bool = True) -> None:
    """The validation table when rows were dropped or noted; one line when all rows are valid."""
    from aligndistil_cli.data import render_report

    if not enabled:
        return
    if report.reasons:
        console().print(render_report(report))
    else:
        console().print(f"data: all {report.n_rows} rows valid")


def reporter(stage: str, ctx: StageContext, unit: str = "optimizer steps") -> Reporter:
    return Reporter(stage, enabled=ctx.dist.is_main, unit=unit)


@torch.no_grad()
def reference_logps_cache(ctx: StageContext, cfg, reference: torch.nn.Module, pairs: list, pad_id: int,
                          vocab: int, key_parts: tuple) -> torch.Tensor:
    """Reference log-probs [N, 2] (chosen, rejected), cached in the output folder by a key of
    the reference weights, the data and the tokenization settings."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from aligndistil_cli.batching import make_batch, response_logps
    from aligndistil_cli.fsutil import atomic_path
    from aligndistil_cli.models import autocast, mixed_precision_enabled

    bf16 = mixed_precision_enabled(cfg.mixed_precision, ctx.device)  # bf16 and fp32 log-probs differ
    key = sha256_text(repr((key_parts, cfg.max_length, cfg.max_prompt_length, len(pairs), bf16)))
    path = ctx.output / "reference_logps.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") == key:
                return fh.get_tensor("logps")
    if ctx.dist.is_main:
        rows = []
        for i in range(0, len(pairs), 8):
            ex = pairs[i: i + 8]
            batch = make_batch([e.prompt_ids for e in ex] * 2, [e.chosen_ids for e in ex] +
                               [e.rejected_ids for e in ex], pad_id).to(ctx.device)
            with autocast(ctx.device, cfg.mixed_precision):
                lp = response_logps(reference, batch, vocab).float().cpu()
            rows.append(lp.view(2, len(ex)).T)
        with atomic_path(path) as tmp:
            save_file({"logps": torch.cat(rows).contiguous()}, str(tmp), metadata={"key": key})
    barrier(ctx.dist)
    with safe_open(str(path), "pt") as fh:
        return fh.get_tensor("logps")


def save_final_model(ctx: StageContext, model: torch.nn.Module, tokenizer) -> None:
    """Write the model files into the run folder, each file renamed into place (rank 0).

    An FSDP model is first gathered (a collective) into one unsharded copy on rank 0, so the
    folder is the same consolidated safetensors folder as an unsharded run's."""
    from aligndistil_cli.models import save_model_folder
    from aligndistil_cli.training import fsdp

    if fsdp.is_sharded(model):
        weights = fsdp.full_model_state(model)
        model = fsdp.plain_copy(model, weights) if ctx.dist.is_main else None
    if ctx.dist.is_main:
        staging = ctx.output / f"{TMP_PREFIX}model-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        save_model_folder(model, tokenizer, staging)
        for item in sorted(staging.iterdir()):
            os.replace(item, ctx.output / item.name)
        shutil.rmtree(staging, ignore_errors=True)
    barrier(ctx.dist)
