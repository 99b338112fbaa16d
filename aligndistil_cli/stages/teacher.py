"""build-teacher: compose the AlignDistil teacher per response token and cache it as shards.

Order: resolve the teacher spec -> check tokenizers -> select the response sequences -> plan
shards (skip the ones an interrupted build already wrote) -> per shard, length-bucketed batches:
one decoder forward of each model, then per chunk of positions: head logits, teacher, alpha,
tvd, reward, top-k -> write shard -> (rank 0) summary and manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aligndistil_cli.batching import make_batch
from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.modeling import decoder_hidden, head_weight, response_positions
from aligndistil_cli.stages.options import DataOptions, ModelOptions, TeacherOptions
from aligndistil_cli.stages.runner import StageContext, run_stage
from aligndistil_cli.training.distributed import barrier

RESPONSES = ("chosen", "rejected", "both", "generations")


@dataclass(frozen=True)
class BuildTeacherConfig(TeacherOptions, DataOptions, ModelOptions):
    """Compose z* = z_base + alpha_t (z_dpo - z_neg) for every response token of --data and store
    its top-k log-probs (or the dense distribution with --top-k 0), alpha_t, TVD_t and the token
    reward in verified safetensors shards. Row j of a sequence predicts response token j."""

    dpo: str = option(help="The DPO model folder (pi_dpo).", group="Model")
    output: str = option(help="Cache folder to write (manifest.json + shard-*.safetensors).", group="Run")
    reverse_dpo: str | None = option(None, "The reverse-DPO model folder (pi_rev); needed for "
                                     "--contrast reverse.", group="Model")
    reference: str | None = option(None, "The reference model; needed for --contrast reference.",
                                   group="Model")
    responses: str = option("chosen", "Which responses to cache (generations: --data is a generate "
                            "output with prompt/response).", choices=RESPONSES, group="Data")
    response_key: str = option("response", "Response column of a generations file.", group="Data")
    top_k: int = option(64, "Teacher log-probs kept per token; 0 stores the dense distribution.",
                        group="Cache")
    cache_dtype: str = option("float16", "Dtype of the stored log-probs.",
                              choices=("float16", "bfloat16", "float32"), group="Cache")
    chunk_tokens: int = option(1024, "Positions per vocabulary-sized chunk (memory: chunk x V fp32).",
                               group="Cache")
    batch_size: int = option(8, "Sequences per forward pass (bucketed by length).", group="Cache")
    shard_size: int = option(256, "Sequences per shard (the unit of resume).", group="Cache")
    overwrite: bool = option(False, "Replace a complete cache or another stage's folder.", group="Run")
    dry_run: bool = option(False, "Validate the config and inputs, load no model.", group="Run")
    seed: int = option(0, "Unused by the math (deterministic); recorded.", group="Run")
    nproc_per_node: int = option(1, "Re-launch under torchrun with N processes (shards split by rank).",
                                 group="Run")

    def validate(self) -> None:
        spec = self.teacher_spec()
        if self.top_k < 0 or self.chunk_tokens < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise AlignDistilError("--top-k must be >= 0 and --chunk-tokens/--batch-size/--shard-size >= 1",
                                   "pass positive sizes")
        if spec.contrast == "reverse" and self.dpo and not self.reverse_dpo:
            raise AlignDistilError("--contrast reverse needs --reverse-dpo",
                                   "pass --reverse-dpo DIR, or --contrast reference --reference DIR")
        if spec.contrast == "reference" and self.dpo and not self.reference:
            raise AlignDistilError("--contrast reference needs --reference", "pass --reference DIR")

    def negative(self) -> str:
        return self.reverse_dpo if self.teacher_spec().contrast == "reverse" else self.reference


@dataclass
class Sequence:
    example_id: int
    prompt_ids: list[int]
    response_ids: list[int]


def select_sequences(cfg, tokenizer) -> tuple[list[Sequence], str]:
    """The (prompt, response) sequences to score, in dataset order, and the data fingerprint."""
    from aligndistil_cli.data import data_fingerprint, load_rows, prepare_pairs, prepare_responses
    from aligndistil_cli.stages.common import show_report

    rows = load_rows(cfg.data, split=cfg.split)
    common = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, on_invalid=cfg.on_invalid)
    if cfg.responses == "generations":
        examples, report = prepare_responses(rows, tokenizer, prompt_key=cfg.prompt_key,
                                             response_key=getattr(cfg, "response_key", "response"), **common)
        seqs = [Sequence(e.row_id, e.prompt_ids, e.response_ids) for e in examples]
    else:
        pairs, report = prepare_pairs(rows, tokenizer, prompt_key=cfg.prompt_key, chosen_key=cfg.chosen_key,
                                      rejected_key=cfg.rejected_key, **common)
        pick = {"chosen": ("chosen_ids",), "rejected": ("rejected_ids",),
                "both": ("chosen_ids", "rejected_ids")}[cfg.responses]
        seqs = [Sequence(p.row_id, p.prompt_ids, getattr(p, attr)) for p in pairs for attr in pick]
    show_report(report)
    if cfg.max_examples:
        seqs = seqs[: cfg.max_examples]
    if not seqs:
        raise AlignDistilError(f"no valid sequences in {cfg.data}", "check the data keys and the validation table")
    fp = data_fingerprint(rows, prompt_key=cfg.prompt_key, chosen_key=cfg.chosen_key, rejected_key=cfg.rejected_key,
                          response_key=getattr(cfg, "response_key", "response"), responses=cfg.responses, max_length=cfg.max_length,
                          max_prompt_length=cfg.max_prompt_length, max_examples=cfg.max_examples)
    return seqs, fp


class TeacherScorer:
    """Scores batches of sequences with the DPO and negative models: one decoder forward of
    each, then the teacher per chunk of positions from the head (no [B, L, V] tensor)."""

    def __init__(self, dpo: torch.nn.Module, neg: torch.nn.Module, spec, vocab: int, top_k: int,
                 chunk_tokens: int, pad_id: int, device: torch.device) -> None:
        self.dpo, self.neg, self.spec, self.vocab, self.top_k = dpo, neg, spec, vocab, top_k
        self.chunk, self.pad_id, self.device = chunk_tokens, pad_id, device

    @torch.no_grad()
    def score(self, seqs: list[Sequence]) -> list[dict[str, torch.Tensor]]:
        from aligndistil_cli.teacher.compose import HeadLogits, compose_chunked, token_reward, topk_rows

        batch = make_batch([s.prompt_ids for s in seqs], [s.response_ids for s in seqs], self.pad_id).to(self.device)
        seq, pos, nxt = response_positions(batch)
        z_dpo = HeadLogits(decoder_hidden(self.dpo, batch)[seq, pos], head_weight(self.dpo), self.vocab)
        z_neg = HeadLogits(decoder_hidden(self.neg, batch)[seq, pos], head_weight(self.neg), self.vocab)

        def keep(rows, zd, zn):
            sl_next = nxt[start: start + len(rows.alpha)]
            out = {"alpha": rows.alpha, "tvd": rows.tvd, "reward": token_reward(zd, zn, sl_next, self.spec.beta)}
            if self.top_k:
                out["topk_ids"], out["topk_logprobs"] = topk_rows(rows.logprobs, self.top_k)
            else:
                out["logprobs"] = rows.logprobs
            return out

        parts: list[dict[str, torch.Tensor]] = []
        start = 0
        for sl, part in compose_chunked(z_dpo, z_neg, self.spec, chunk_tokens=self.chunk, fn=keep):
            parts.append({k: v.cpu() for k, v in part.items()})
            start = sl.stop
        rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return _split_rows(rows, seq.cpu(), len(seqs))


def _split_rows(rows: dict[str, torch.Tensor], seq: torch.Tensor, n: int) -> list[dict[str, torch.Tensor]]:
    counts = torch.bincount(seq, minlength=n).tolist()
    chunks = {k: torch.split(v, counts) for k, v in rows.items()}
    return [{k: chunks[k][i] for k in rows} for i in range(n)]


def score_shard(scorer: TeacherScorer, seqs: list[Sequence], batch_size: int) -> list:
    """Records of one shard, in order; batches are formed from length-sorted sequences."""
    from aligndistil_cli.teacher.cache import SequenceRecord

    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i].prompt_ids) + len(seqs[i].response_ids)))
    records: list = [None] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        for i, rows in zip(idx, scorer.score([seqs[i] for i in idx])):
            s = seqs[i]
            ids = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.int32)
            records[i] = SequenceRecord(example_id=int(s.example_id), input_ids=ids,
                                        response_start=len(s.prompt_ids), **rows)
    return records


def cache_summary(folder: Path, infos: list[dict], top_k: int) -> dict[str, Any]:
    """Summary of a finished cache, read back from its shards (covers resumed shards too).

    Timings stay out of it (they go to the run record) so a resumed build writes the same
    manifest as an uninterrupted one."""
    from safetensors import safe_open

    alpha, reward, mass, total_bytes = [], [], [], 0
    for info in infos:
        total_bytes += (folder / info["file"]).stat().st_size
        with safe_open(str(folder / info["file"]), "pt") as fh:
            alpha.append(fh.get_tensor("alpha"))
            reward.append(fh.get_tensor("reward"))
            if top_k:
                mass.append(fh.get_tensor("topk_logprobs").float().exp().sum(-1))
    alpha_t, reward_t = torch.cat(alpha), torch.cat(reward)
    tokens = int(alpha_t.numel())

    def q(t: torch.Tensor, p: float) -> float:
        return float(torch.quantile(t.float()[:1_000_000], p))

    summary = {
        "sequences": sum(i["sequences"] for i in infos), "tokens": tokens,
        "bytes_per_token": total_bytes / max(tokens, 1),
        "alpha_mean": float(alpha_t.mean()), "alpha_p5": q(alpha_t, 0.05), "alpha_median": q(alpha_t, 0.5),
        "alpha_p95": q(alpha_t, 0.95), "token_reward_mean": float(reward_t.mean()),
    }
    if mass:
        kept = torch.cat(mass)
        summary.update({"kept_mass_mean": float(kept.mean()), "kept_mass_p5": q(kept, 0.05),
                        "kept_mass_median": q(kept, 0.5)})
    return summary


def _clear_or_check(folder: Path, meta: dict, cfg: BuildTeacherConfig, vocab: int) -> None:
    """--overwrite removes an earlier cache; otherwise a cache of another config is refused."""
    from aligndistil_cli.teacher.cache import MANIFEST, SIDECAR_SUFFIX, check_compatible

    if cfg.overwrite:
        for child in folder.iterdir():
            if child.name == MANIFEST or child.name.startswith("shard-") or child.name.endswith(SIDECAR_SUFFIX):
                child.unlink()
    elif (folder / MANIFEST).is_file():
        check_compatible(folder, meta, top_k=cfg.top_k, vocab_size=vocab, cache_dtype=cfg.cache_dtype)


def run_build_teacher(cfg: BuildTeacherConfig) -> dict[str, Any]:
    from aligndistil_cli.stages import common

    spec = cfg.teacher_spec()
    if cfg.dry_run:
        return common.dry_run(cfg, "build-teacher", models=[cfg.dpo, cfg.negative()], data=cfg.data)

    def body(ctx: StageContext) -> dict[str, Any]:
        from aligndistil_cli.models import tokenizer_fingerprint
        from aligndistil_cli.teacher.cache import CacheWriter

        common.check_tokenizers(cfg, {"dpo": cfg.dpo, "negative": cfg.negative()})
        tokenizer = common.load_tokenizer_for(cfg, cfg.dpo)
        seqs, data_fp = select_sequences(cfg, tokenizer)
        dpo, neg = common.load_frozen(cfg, cfg.dpo, ctx.device), common.load_frozen(cfg, cfg.negative(), ctx.device)
        vocab = common.shared_vocab(tokenizer, dpo=dpo, negative=neg)
        fingerprints = {"dpo": common.fingerprint_input(cfg.dpo), "negative": common.fingerprint_input(cfg.negative())}
        meta = {"teacher": {"variant": cfg.variant_name(), **spec.to_dict()},
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "model_fingerprints": fingerprints,
                "data_fingerprint": data_fp,
                "selection": {"responses": cfg.responses, "sequences": len(seqs), "data": str(cfg.data),
                              "split": cfg.split, "max_length": cfg.max_length,
                              "max_prompt_length": cfg.max_prompt_length}}
        ctx.record.inputs.update(fingerprints | {"data": data_fp, "sequences": len(seqs)})
        if ctx.dist.is_main:
            _clear_or_check(ctx.output, meta, cfg, vocab)
        barrier(ctx.dist)
        writer = CacheWriter(ctx.output, meta=meta, top_k=cfg.top_k, vocab_size=vocab, cache_dtype=cfg.cache_dtype,
                             shard_size=cfg.shard_size, rank=ctx.dist.rank, world_size=ctx.dist.world_size)
        plan = writer.shard_plan(len(seqs))
        scorer = TeacherScorer(dpo, neg, spec, vocab, cfg.top_k, cfg.chunk_tokens, tokenizer.pad_token_id, ctx.device)
        t0, computed = time.time(), 0
        reporter = common.reporter("build-teacher", ctx, unit="shards")
        reporter.start(len(plan))
        for s in writer.my_shards():
            if not writer.shard_done(s):
                records = score_shard(scorer, [seqs[i] for i in plan[s]], cfg.batch_size)
                computed += writer.write_shard(s, records)["tokens"]
            reporter.update(s + 1, {"shard": s + 1})
        reporter.stop()
        seconds = time.time() - t0
        barrier(ctx.dist)
        if not ctx.dist.is_main:
            return {}
        infos = writer.collect_shard_infos(len(plan))
        summary = cache_summary(ctx.output, infos, cfg.top_k)
        writer.finalize(infos, summary)
        return {**summary, "computed_tokens": computed, "seconds": seconds,
                "tokens_per_sec": computed / max(seconds, 1e-9) if computed else None}

    return run_stage("build-teacher", cfg, cfg.output, body)
