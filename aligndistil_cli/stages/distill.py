"""distill: pull the student (initialised from pi_ref) toward the synthetic teacher, token by token.

Loss (paper Eq. 18-19): per sequence (1/|y|) sum_t (beta/alpha_t) KL(pi_theta(.|t) || pi*(.|t)),
mean over sequences, through the one chunked loss ``losses.distill.distill_loss``. Three ways
to get the teacher rows, one task class each:
- ``CacheTask``    off-policy from a build-teacher cache: only the student is in memory;
- ``LiveTask``     off-policy with the DPO and negative models live (the official trainer);
- ``OnPolicyTask`` samples from the current student at the start of every optimizer step
                   (strictly on-policy: one update per rollout batch), scored by the live teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aligndistil_cli.batching import make_batch
from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.losses.distill import DIVERGENCES, DenseTargets, LiveTargets, TopKTargets, distill_loss
from aligndistil_cli.modeling import ResponseRows, head_weight, response_positions, response_rows
from aligndistil_cli.models import autocast
from aligndistil_cli.stages.dpo import loop_settings
from aligndistil_cli.stages.options import DataOptions, ModelOptions, TeacherOptions, TrainOptions
from aligndistil_cli.stages.runner import StageContext, run_stage
from aligndistil_cli.stages.teacher import RESPONSES, Sequence
from aligndistil_cli.training import fsdp
from aligndistil_cli.training.loop import MicroOutput, TrainLoop


@dataclass(frozen=True)
class DistillConfig(TeacherOptions, TrainOptions, DataOptions, ModelOptions):
    """Off-policy from a cache (--teacher), off-policy live (--dpo --reverse-dpo --data) or
    on-policy (--on-policy --dpo --reverse-dpo --prompts). The output is a Hugging Face model folder."""

    model: str = option(help="Student start = the reference policy pi_ref (model folder).", group="Model")
    output: str = option(help="Output folder (a Hugging Face model folder plus run record).", group="Run")
    teacher: str | None = option(None, "A build-teacher cache folder (off-policy from the cache).", group="Teacher")
    dpo: str | None = option(None, "DPO model (live teacher).", group="Teacher")
    reverse_dpo: str | None = option(None, "Reverse-DPO model (live teacher, --contrast reverse).", group="Teacher")
    reference: str | None = option(None, "Reference model (live teacher, --contrast reference).", group="Teacher")
    data: str | None = option(None, "Preference data for live off-policy distillation.", group="Data")
    responses: str = option("chosen", "Responses to distil on in live off-policy mode.",
                            choices=RESPONSES[:3], group="Data")
    on_policy: bool = option(False, "Sample responses from the current student every step.", group="On-policy")
    prompts: str | None = option(None, "Prompt file for --on-policy (prompt column, or preference data).",
                                 group="On-policy")
    max_new_tokens: int = option(256, "Longest sampled response.", group="On-policy")
    samples_per_prompt: int = option(1, "Responses sampled per prompt.", group="On-policy")
    temperature: float = option(1.0, "Sampling temperature.", group="On-policy")
    top_p: float = option(1.0, "Nucleus sampling threshold (1.0 = full distribution).", group="On-policy")
    divergence: str = option("reverse_kl", "reverse_kl = KL(student || teacher), the method.",
                             choices=DIVERGENCES, group="Loss")
    length_norm: bool = option(True, "Divide each sequence's loss by its length (official "
                               "--reward_len_norm); --no-length-norm sums.", group="Loss")
    chunk_tokens: int = option(1024, "Positions per vocabulary chunk of the loss.", group="Loss")

    def mode(self) -> str:
        if self.teacher:
            return "cache"
        return "on-policy" if self.on_policy else "live"

    def validate(self) -> None:
        super().validate()
        spec = self.teacher_spec()
        if self.teacher and (self.on_policy or self.dpo):
            raise AlignDistilError("--teacher (cache) cannot be combined with --on-policy or --dpo",
                                   "use the cache, or the live models, not both")
        if not self.model or self.teacher:
            return
        neg = self.reverse_dpo if spec.contrast == "reverse" else self.reference
        if not self.dpo or not neg:
            raise AlignDistilError("distill needs --teacher CACHE, or --dpo with --reverse-dpo "
                                   "(--reference for --contrast reference)",
                                   "build a cache with build-teacher, or pass the live models")
        if self.on_policy and not self.prompts:
            raise AlignDistilError("--on-policy needs --prompts PATH", "pass a prompt or preference file")
        if not self.on_policy and not self.data:
            raise AlignDistilError("live off-policy distillation needs --data PATH", "pass the preference data")

    def negative(self) -> str | None:
        return self.reverse_dpo if self.teacher_spec().contrast == "reverse" else self.reference


class _StudentTask:
    """Shared pieces: batching sequences, the student rows, and the loss call."""

    def __init__(self, cfg: DistillConfig, pad_id: int, vocab: int, device: torch.device) -> None:
        self.cfg, self.pad_id, self.vocab, self.device = cfg, pad_id, vocab, device

    def batch(self, prompts: list[list[int]], responses: list[list[int]]):
        return make_batch(prompts, responses, self.pad_id).to(self.device)

    @staticmethod
    def student(model, batch) -> tuple[ResponseRows, torch.Tensor | None]:
        """(rows, head weight): decoder hidden states and the head for the fused chunked loss (no
        [N, V] tensor). Under FSDP, (rows holding logits [N, V], None) from the root forward:
        calling the decoder and the head directly would skip the root unit's hooks, leaving the
        embeddings, final norm and head sharded."""
        if not fsdp.is_sharded(model):
            return response_rows(model, batch), head_weight(model)
        seq, pos, nxt = response_positions(batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return ResponseRows(logits[seq, pos], nxt, seq), None

    def loss(self, rows, head, targets, weight) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n_seq = int(rows.seq_index.max()) + 1 if rows.seq_index.numel() else 1
        return distill_loss(rows.hidden, targets, weight, rows.seq_index, n_seq, divergence=self.cfg.divergence,
                            length_norm=self.cfg.length_norm, denominator=1.0, chunk_tokens=self.cfg.chunk_tokens,
                            head_weight=head, vocab_size=self.vocab)

    @staticmethod
    def output(loss: torch.Tensor, stats: dict[str, torch.Tensor], n_seq: int, n_tok: int,
               extra: dict[str, tuple[float, float]] | None = None) -> MicroOutput:
        ntok = float(stats["n_tokens"])
        metrics = {k: (float(stats[k]) * ntok, ntok) for k in ("kl", "weighted_kl", "mean_weight", "mean_alpha",
                                                               "mean_tvd") if k in stats}
        metrics["response_length"] = (ntok, n_seq)
        metrics.update(extra or {})
        return MicroOutput(loss, metrics, n_tok)


class CacheTask(_StudentTask):
    """Off-policy from the cache: token ids and teacher rows both come from the shards."""

    def __init__(self, cache, cfg, pad_id, vocab, device) -> None:
        super().__init__(cfg, pad_id, vocab, device)
        self.cache = cache
        self.beta = float(cache.manifest["teacher"]["beta"])

    def __len__(self) -> int:
        return len(self.cache)

    def example_ids(self, indices):
        return [self.cache[i].example_id for i in indices]

    def micro_step(self, model, indices: list[int]) -> MicroOutput:
        recs = [self.cache[i] for i in indices]
        ids = [r.input_ids.tolist() for r in recs]
        batch = self.batch([x[: r.response_start] for x, r in zip(ids, recs)],
                           [x[r.response_start:] for x, r in zip(ids, recs)])
        if self.cache.dense:
            targets = DenseTargets(torch.cat([r.logprobs for r in recs]).to(self.device))
        else:
            targets = TopKTargets(torch.cat([r.topk_ids for r in recs]).to(self.device),
                                  torch.cat([r.topk_logprobs for r in recs]).to(self.device))
        alpha = torch.cat([r.alpha for r in recs]).to(self.device)
        with autocast(self.device, self.cfg.mixed_precision):
            rows, head = self.student(model, batch)
        loss, stats = self.loss(rows, head, targets, self.beta / alpha)
        stats["mean_alpha"] = alpha.mean()
        reward = torch.cat([r.reward for r in recs])
        return self.output(loss, stats, len(recs), int(batch.attention_mask.sum()),
                           {"data_token_reward": (float(reward.sum()), reward.numel())})


@torch.no_grad()
def live_diagnostics(student_hidden: torch.Tensor, student_head: torch.Tensor | None, z_dpo, z_neg, beta: float,
                     vocab: int, chunk: int) -> dict[str, tuple[float, float]]:
    """Expected token reward under the student, sum_v pi_theta(v) beta (log p_dpo(v) - log p_neg(v)),
    and KL(pi_theta || pi_dpo), summed over rows (logged, not trained). Without a head,
    ``student_hidden`` holds the student's logits."""
    from aligndistil_cli.teacher.compose import logit_rows

    n = student_hidden.shape[0]
    reward = kl_dpo = 0.0
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        z = student_hidden[sl, :vocab] if student_head is None else student_hidden[sl] @ student_head[:vocab].T
        s = torch.log_softmax(z.float(), -1)
        d = torch.log_softmax(logit_rows(z_dpo, sl), -1)
        g = torch.log_softmax(logit_rows(z_neg, sl), -1)
        p = s.exp()
        reward += float((p * (d - g)).sum()) * beta
        kl_dpo += float((p * (s - d)).sum())
    return {"expected_token_reward": (reward, n), "kl_to_dpo": (kl_dpo, n)}


class LiveTask(_StudentTask):
    """Off-policy with live teacher models: the teacher is composed per chunk from their heads."""

    def __init__(self, seqs: list[Sequence], dpo, neg, cfg, pad_id, vocab, device) -> None:
        super().__init__(cfg, pad_id, vocab, device)
        self.seqs, self.dpo, self.neg, self.spec = seqs, dpo, neg, cfg.teacher_spec()

    def __len__(self) -> int:
        return len(self.seqs)

    def example_ids(self, indices):
        return [self.seqs[i].example_id for i in indices]

    def sequences(self, indices: list[int]) -> list[Sequence]:
        return [self.seqs[i] for i in indices]

    def micro_step(self, model, indices: list[int]) -> MicroOutput:
        from aligndistil_cli.teacher.compose import HeadLogits

        seqs = self.sequences(indices)
        batch = self.batch([s.prompt_ids for s in seqs], [s.response_ids for s in seqs])
        with torch.no_grad(), autocast(self.device, self.cfg.mixed_precision):
            zd = HeadLogits(response_rows(self.dpo, batch).hidden, head_weight(self.dpo), self.vocab)
            zn = HeadLogits(response_rows(self.neg, batch).hidden, head_weight(self.neg), self.vocab)
        with autocast(self.device, self.cfg.mixed_precision):
            rows, head = self.student(model, batch)
        loss, stats = self.loss(rows, head, LiveTargets(zd, zn, self.spec), None)
        extra = live_diagnostics(rows.hidden.detach(), None if head is None else head.detach(), zd, zn,
                                 self.spec.beta, self.vocab, self.cfg.chunk_tokens)
        return self.output(loss, stats, len(seqs), int(batch.attention_mask.sum()), extra)


class OnPolicyTask(LiveTask):
    """Examples are (prompt, sample) slots; their responses are sampled from the current student
    when the optimizer step that uses them begins (the weights do not change within a step)."""

    def __init__(self, prompts: list, dpo, neg, cfg, pad_id, vocab, device, tokenizer) -> None:
        slots = [Sequence(p.row_id, p.prompt_ids, []) for p in prompts for _ in range(cfg.samples_per_prompt)]
        super().__init__(slots, dpo, neg, cfg, pad_id, vocab, device)
        self.tokenizer, self.step, self.model = tokenizer, 0, None

    def begin_step(self, step: int) -> None:
        self.step = step

    def sequences(self, indices: list[int]) -> list[Sequence]:
        from aligndistil_cli.generation import derive_seed, sample_responses

        was_training = self.model.training
        self.model.eval()
        seed = derive_seed(self.cfg.seed, self.step * 1_000_003 + min(indices))
        responses = sample_responses(self.model, self.tokenizer, [self.seqs[i].prompt_ids for i in indices],
                                     max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                     top_p=self.cfg.top_p, batch_size=len(indices), seed=seed,
                                     vocab_size=self.vocab)
        self.model.train(was_training)
        return [Sequence(self.seqs[i].example_id, self.seqs[i].prompt_ids, r[0]) for i, r in zip(indices, responses)]

    def micro_step(self, model, indices: list[int]) -> MicroOutput:
        self.model = model
        return super().micro_step(model, indices)


def _cache_task(cfg: DistillConfig, ctx: StageContext, tokenizer, student):
    from aligndistil_cli.models import tokenizer_fingerprint
    from aligndistil_cli.stages import common
    from aligndistil_cli.teacher.cache import TeacherCache, check_tokenizer

    cache = TeacherCache(cfg.teacher, verify=True)
    check_tokenizer(cache, tokenizer_fingerprint(tokenizer), what="student")
    vocab = common.shared_vocab(tokenizer, student=student)
    if cache.vocab_size > vocab:
        raise AlignDistilError(f"the cache has {cache.vocab_size} vocabulary rows, the student only {vocab}",
                               "distil a student with the teachers' tokenizer and head")
    ctx.record.inputs["teacher_cache"] = {"path": str(cfg.teacher), "teacher": cache.manifest["teacher"],
                                          "top_k": cache.top_k, "shards": [s["sha256"] for s in cache.manifest["shards"]]}
    return CacheTask(cache, cfg, tokenizer.pad_token_id, cache.vocab_size, ctx.device)


def _live_task(cfg: DistillConfig, ctx: StageContext, tokenizer, student):
    from aligndistil_cli.data import load_rows, prepare_prompts
    from aligndistil_cli.stages import common
    from aligndistil_cli.stages.teacher import select_sequences

    common.check_tokenizers(cfg, {"student": cfg.model, "dpo": cfg.dpo, "negative": cfg.negative()})
    dpo, neg = common.load_frozen(cfg, cfg.dpo, ctx.device), common.load_frozen(cfg, cfg.negative(), ctx.device)
    vocab = common.shared_vocab(tokenizer, student=student, dpo=dpo, negative=neg)
    ctx.record.inputs.update({"dpo": common.fingerprint_input(cfg.dpo),
                              "negative": common.fingerprint_input(cfg.negative())})
    if not cfg.on_policy:
        seqs, data_fp = select_sequences(cfg, tokenizer)
        ctx.record.inputs["data"] = data_fp
        return LiveTask(seqs, dpo, neg, cfg, tokenizer.pad_token_id, vocab, ctx.device)
    prompts, report = prepare_prompts(load_rows(cfg.prompts, split=cfg.split), tokenizer,
                                      prompt_key=cfg.prompt_key, max_prompt_length=cfg.max_prompt_length)
    common.show_report(report)
    prompts = prompts[: cfg.max_examples] if cfg.max_examples else prompts
    if not prompts:
        raise AlignDistilError(f"no usable prompts in {cfg.prompts}", "check --prompt-key")
    return OnPolicyTask(prompts, dpo, neg, cfg, tokenizer.pad_token_id, vocab, ctx.device, tokenizer)


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    from aligndistil_cli.stages import common

    if cfg.dry_run:
        return common.dry_run(cfg, "distill", models=[cfg.model, cfg.dpo or "", cfg.negative() or ""],
                              data=cfg.data or cfg.prompts, paths=[cfg.teacher] if cfg.teacher else [])

    def body(ctx: StageContext) -> dict[str, Any]:
        tokenizer = common.load_tokenizer_for(cfg, cfg.model)
        student = common.load_trainable(cfg, cfg.model, ctx.device)
        ctx.record.inputs["model"] = common.fingerprint_input(cfg.model)
        task = (_cache_task if cfg.mode() == "cache" else _live_task)(cfg, ctx, tokenizer, student)
        student = common.shard_trainable(cfg, ctx, student)
        loop = TrainLoop(student, tokenizer, task, loop_settings(cfg, ctx.output, ctx.resume_from), ctx.dist,
                         common.reporter(f"distill ({cfg.mode()})", ctx))
        metrics = loop.run()
        common.save_final_model(ctx, student, tokenizer)
        return metrics

    return run_stage("distill", cfg, cfg.output, body, extra={"mode": cfg.mode()})
