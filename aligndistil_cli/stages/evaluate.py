"""evaluate: reward accuracy, policy quality against the reference, training curves.

Three independent parts; each runs when its inputs are given:

a. reward accuracy (``--pairs``): fraction of held-out pairs with r(chosen) > r(rejected) for the
   DPO reward beta*log(pi_dpo/pi_ref) (``--dpo --reference``), the contrastive reward
   beta*log(pi_dpo/pi_rev) (``--dpo --reverse-dpo``), sums over response tokens, and for a
   reward model (``--reward-model``); ties are counted and reported (they score 0);
b. policy quality (``--model ... --prompts --reference``): every model and the reference sample
   the same prompts with the same seed; judge reward (mean, 95% CI), win rate against the
   reference's response to the same prompt and sample slot (ties half), Monte-Carlo sequence
   KL to the reference, mean response length in tokens (EOS excluded), distinct-2;
c. training curves (``--runs``): ``curves.png`` from each run folder's ``metrics.jsonl``.

Files in ``--output``: ``eval.json`` (every number and the config), ``samples.jsonl`` (every
prompt/response/score), ``frontier.png`` (reward vs KL), ``curves.png`` and the run record.
Models are loaded one at a time and freed before the next one (policies, then the reference,
then the judge), so peak memory is one model.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.stages.options import DataKeys, ModelOptions

OUTPUT_FORMATS = ("table", "json")


@dataclass(frozen=True)
class EvaluateConfig(DataKeys, ModelOptions):
    """Reward accuracy on held-out pairs (--pairs), policy quality against the reference
    (--model ... --prompts --reference) and training curves (--runs); any subset. Writes
    eval.json, samples.jsonl, frontier.png and curves.png into --output."""

    output: str = option(help="Output folder (eval.json, samples.jsonl, plots, run record).", group="Run")
    pairs: str | None = option(None, "Held-out preference pairs for reward accuracy.", group="Reward accuracy")
    dpo: str | None = option(None, "DPO model (implicit rewards).", group="Reward accuracy")
    reverse_dpo: str | None = option(None, "Reverse-DPO model (contrastive reward).", group="Reward accuracy")
    reward_model: str | None = option(None, "Sequence-classification reward model folder scored on the pairs.",
                                      group="Reward accuracy")
    beta: float = option(0.1, "beta0 of the implicit rewards.", group="Reward accuracy")
    max_pairs: int | None = option(None, "Use only the first N valid pairs.", group="Reward accuracy")
    reference: str | None = option(None, "Reference model: DPO-reward anchor, KL anchor and win-rate baseline.",
                                   group="Model")
    model: list[str] = option([], "Policy to evaluate (repeatable).", group="Policy quality")
    name: list[str] = option([], "Display name per --model, same order (default: folder names).",
                             group="Policy quality")
    group: list[str] = option([], "Frontier family per --model, same order (default: its name).",
                              group="Policy quality")
    prompts: str | None = option(None, "Held-out prompts (prompt column or preference data).", group="Policy quality")
    judge: str = option("sentiment", "sentiment (VADER) or a reward-model folder.", group="Policy quality")
    samples_per_prompt: int = option(2, "Responses sampled per prompt and model.", group="Policy quality")
    max_new_tokens: int = option(64, "Longest sampled response.", group="Policy quality")
    temperature: float = option(1.0, "Sampling temperature.", group="Policy quality")
    top_p: float = option(1.0, "Nucleus sampling threshold.", group="Policy quality")
    seed: int = option(0, "Sampling seed (the same for every model, so samples align).", group="Policy quality")
    max_prompts: int | None = option(None, "Use only the first N valid prompts.", group="Policy quality")
    runs: list[str] = option([], "Training run folder with metrics.jsonl for curves.png (repeatable).",
                             group="Curves")
    batch_size: int = option(32, "Sequences per forward / generate call.", group="Run")
    format: str = option("table", "table, or json (print eval.json to stdout).", choices=OUTPUT_FORMATS,
                         group="Run")
    overwrite: bool = option(False, "Replace a complete evaluation in --output.", group="Run")

    def validate(self) -> None:
        if not (self.pairs or self.model or self.runs):
            raise AlignDistilError("nothing to evaluate", "pass --pairs, --model (with --prompts) or --runs")
        if self.beta <= 0 or self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise AlignDistilError("--beta, --samples-per-prompt, --max-new-tokens and --batch-size must be "
                                   "positive", "pass positive values")
        self._validate_pairs()
        self._validate_policies()

    def _validate_pairs(self) -> None:
        if not self.pairs:
            return
        if self.dpo and not (self.reference or self.reverse_dpo):
            raise AlignDistilError("--dpo needs --reference and/or --reverse-dpo for implicit rewards",
                                   "pass --reference DIR (DPO reward) or --reverse-dpo DIR (contrastive)")
        if not self.dpo and not self.reward_model:
            raise AlignDistilError("--pairs needs --dpo (with --reference/--reverse-dpo) or --reward-model",
                                   "pass the models whose rewards to score")

    def _validate_policies(self) -> None:
        if not self.model:
            if self.name or self.group:
                raise AlignDistilError("--name/--group need --model", "pass one --model per --name")
            return
        if not self.prompts or not self.reference:
            raise AlignDistilError("--model needs --prompts and --reference",
                                   "pass held-out prompts and the reference model")
        for flag, values in (("--name", self.name), ("--group", self.group)):
            if values and len(values) != len(self.model):
                raise AlignDistilError(f"{len(values)} {flag} for {len(self.model)} --model",
                                       f"give one {flag} per --model, in the same order")
        names = self.model_names()
        if len(set(names)) != len(names):
            raise AlignDistilError(f"model names are not unique: {', '.join(names)}", "pass --name per --model")

    def model_names(self) -> list[str]:
        from aligndistil_cli.stages.generate import model_name

        return list(self.name) if self.name else [model_name(m) for m in self.model]


# --------------------------------------------------------------------------------------------
# shared helpers


def config_vocab(cfg: ModelOptions, paths: list[str], tokenizer: Any) -> int:
    """Logit rows every model in ``paths`` shares, from their configs (no weights loaded)."""
    from transformers import AutoConfig

    sizes = []
    for p in dict.fromkeys(paths):
        local = Path(p).expanduser().exists()
        conf = AutoConfig.from_pretrained(str(Path(p).expanduser()) if local else p,
                                          trust_remote_code=cfg.trust_remote_code,
                                          revision=None if local else cfg.revision)
        text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
        sizes.append(int(text.vocab_size))
    size = min(sizes)
    if len(tokenizer) > size:
        raise AlignDistilError(f"the tokenizer has {len(tokenizer)} tokens but a model has only {size} "
                               "output rows", "use the tokenizer that belongs to these models")
    return size


def with_model(cfg: ModelOptions, path: str, device: torch.device, vocab: int,
               fn: Callable[[torch.nn.Module], Any]) -> Any:
    """Load ``path`` frozen, return ``fn(model)`` and free the model before returning."""
    from aligndistil_cli.stages.common import console, load_frozen

    console().print(f"[dim]evaluate: loading {path}[/dim]")
    model = load_frozen(cfg, path, device)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise AlignDistilError(f"{path} has {rows} output rows, fewer than its config's {vocab}",
                               "fix the model's config.json vocab_size")
    try:
        return fn(model)
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def finite_or_none(obj: Any) -> Any:
    """NaN/inf -> None recursively (eval.json stays strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# a. reward accuracy


def _select_pairs(cfg: EvaluateConfig, tokenizer: Any) -> tuple[list, dict[int, Any]]:
    """Valid tokenized pairs (when a DPO model is scored) and the raw rows by row id."""
    from aligndistil_cli.data import ROW_ID_KEY, load_rows, prepare_pairs
    from aligndistil_cli.stages.common import show_report

    rows = load_rows(cfg.pairs, split=cfg.split)
    by_id = {r[ROW_ID_KEY]: r for r in rows if isinstance(r, dict)}
    pairs, report = prepare_pairs(rows, tokenizer, prompt_key=cfg.prompt_key, chosen_key=cfg.chosen_key,
                                  rejected_key=cfg.rejected_key, max_length=cfg.max_length,
                                  max_prompt_length=cfg.max_prompt_length, on_invalid="skip")
    show_report(report)
    pairs = pairs[: cfg.max_pairs] if cfg.max_pairs else pairs
    if not pairs:
        raise AlignDistilError(f"no valid preference pairs in {cfg.pairs}",
                               "check --chosen-key/--rejected-key and the validation table")
    return pairs, by_id


def accuracy_stats(chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    from aligndistil_cli.evaluation.stats import reward_accuracy, reward_ties

    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": reward_accuracy(chosen, rejected), "ties": reward_ties(chosen, rejected),
            "pairs": len(chosen), "margin_mean": sum(margins) / len(margins),
            "chosen_mean": sum(chosen) / len(chosen), "rejected_mean": sum(rejected) / len(rejected)}


def _pair_logps(cfg: EvaluateConfig, path: str, pairs: list, vocab: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [N] of the chosen and of the rejected responses under ``path``."""
    from aligndistil_cli.evaluation.kl import sequence_logps

    n = len(pairs)
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    lp = with_model(cfg, path, device, vocab, lambda m: sequence_logps(
        m, prompts, responses, batch_size=cfg.batch_size, vocab_size=vocab, device=device))
    return lp[:n], lp[n:]


def implicit_rewards(cfg: EvaluateConfig, pairs: list, tokenizer: Any, device: torch.device) -> dict[str, dict]:
    """DPO and/or contrastive reward accuracy of ``pairs``."""
    from aligndistil_cli.evaluation.kl import reward_scores
    from aligndistil_cli.stages.common import check_tokenizers

    anchors = {"dpo_reward": cfg.reference, "contrastive_reward": cfg.reverse_dpo}
    anchors = {k: v for k, v in anchors.items() if v}
    check_tokenizers(cfg, {"dpo": cfg.dpo, **anchors})
    vocab = config_vocab(cfg, [cfg.dpo, *anchors.values()], tokenizer)
    dpo_c, dpo_r = _pair_logps(cfg, cfg.dpo, pairs, vocab, device)
    out = {}
    for kind, path in anchors.items():
        neg_c, neg_r = _pair_logps(cfg, path, pairs, vocab, device)
        chosen = reward_scores(dpo_c, neg_c, cfg.beta).tolist()
        rejected = reward_scores(dpo_r, neg_r, cfg.beta).tolist()
        out[kind] = {"formula": f"beta*log(pi_dpo/pi_{'ref' if kind == 'dpo_reward' else 'rev'})",
                     **accuracy_stats(chosen, rejected)}
    return out


def reward_model_accuracy(cfg: EvaluateConfig, row_ids: list[int], by_id: dict[int, Any],
                          device: torch.device) -> dict[str, Any]:
    """Reward-model accuracy on the same pairs, scored on their texts."""
    from aligndistil_cli.data import normalize_row
    from aligndistil_cli.evaluation.judges import RewardModelJudge
    from aligndistil_cli.models import resolve_dtype

    convs = [normalize_row(by_id[i], cfg.prompt_key, [cfg.chosen_key, cfg.rejected_key]) for i in row_ids]
    judge = RewardModelJudge(cfg.reward_model, device=device, dtype=resolve_dtype(cfg.dtype, device),
                             batch_size=cfg.batch_size)
    prompts = [c.prompt_text for c in convs]
    chosen = judge.score(prompts, [c.responses[0] for c in convs])
    rejected = judge.score(prompts, [c.responses[1] for c in convs])
    del judge
    gc.collect()
    return {"formula": f"reward model {Path(cfg.reward_model).name}", **accuracy_stats(chosen, rejected)}


def reward_accuracy_part(cfg: EvaluateConfig, device: torch.device) -> dict[str, Any]:
    """Part a: accuracy (and ties) of every reward that the given models define."""
    from aligndistil_cli.stages.common import load_tokenizer_for

    tokenizer = load_tokenizer_for(cfg, cfg.dpo or cfg.reward_model)
    pairs, by_id = _select_pairs(cfg, tokenizer)
    out = implicit_rewards(cfg, pairs, tokenizer, device) if cfg.dpo else {}
    if cfg.reward_model:
        out["reward_model"] = reward_model_accuracy(cfg, [p.row_id for p in pairs], by_id, device)
    return out


# --------------------------------------------------------------------------------------------
# b. policy quality


@dataclass
class PolicyRun:
    """One evaluated policy's samples, flattened prompt-major: index i * S + s."""

    name: str
    path: str
    group: str
    responses: list[list[int]] = field(default_factory=list)
    logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _sample_and_score(cfg: EvaluateConfig, model: torch.nn.Module, tokenizer: Any, prompt_ids: list[list[int]],
                      vocab: int, device: torch.device) -> tuple[list[list[int]], torch.Tensor]:
    """Samples (flattened) and their log-probs under the sampling model."""
    from aligndistil_cli.evaluation.kl import sequence_logps
    from aligndistil_cli.generation import sample_responses

    out = sample_responses(model, tokenizer, prompt_ids, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p,
                           samples_per_prompt=cfg.samples_per_prompt, batch_size=cfg.batch_size,
                           seed=cfg.seed, vocab_size=vocab)
    flat = [r for per_prompt in out for r in per_prompt]
    flat_prompts = [p for p in prompt_ids for _ in range(cfg.samples_per_prompt)]
    return flat, sequence_logps(model, flat_prompts, flat, batch_size=cfg.batch_size, vocab_size=vocab,
                                device=device)


def _reference_pass(cfg: EvaluateConfig, policies: list[PolicyRun], baseline: PolicyRun, tokenizer: Any,
                    prompt_ids: list[list[int]], vocab: int, device: torch.device) -> None:
    """With the reference loaded once: sample the baseline (unless a policy is the reference) and
    compute log pi_ref of every other policy's samples."""
    from aligndistil_cli.evaluation.kl import sequence_logps

    flat_prompts = [p for p in prompt_ids for _ in range(cfg.samples_per_prompt)]
    todo = [p for p in policies if p.ref_logps is None]

    def run(model: torch.nn.Module) -> None:
        if baseline.logps is None:
            baseline.responses, baseline.logps = _sample_and_score(cfg, model, tokenizer, prompt_ids, vocab, device)
            baseline.ref_logps = baseline.logps
        for p in todo:
            p.ref_logps = sequence_logps(model, flat_prompts, p.responses, batch_size=cfg.batch_size,
                                         vocab_size=vocab, device=device)

    if todo or baseline.logps is None:
        with_model(cfg, cfg.reference, device, vocab, run)


def _judge_all(cfg: EvaluateConfig, runs: list[PolicyRun], prompt_texts: list[str], tokenizer: Any,
               device: torch.device) -> str:
    """Decode every run's responses and score them with the judge; returns the judge's name."""
    from aligndistil_cli.evaluation.judges import make_judge
    from aligndistil_cli.generation import decode
    from aligndistil_cli.models import resolve_dtype

    judge = make_judge(cfg.judge, device, dtype=resolve_dtype(cfg.dtype, device), batch_size=cfg.batch_size)
    flat_prompts = [t for t in prompt_texts for _ in range(cfg.samples_per_prompt)]
    for run in runs:
        run.texts = [decode(tokenizer, r) for r in run.responses]
        run.scores = judge.score(flat_prompts, run.texts)
    name = judge.name
    del judge
    gc.collect()
    return name


def policy_metrics(run: PolicyRun, baseline: PolicyRun) -> dict[str, Any]:
    """Reward with CI, win rate vs the baseline, sequence KL (with CI), length, distinct-2."""
    from aligndistil_cli.evaluation.kl import sequence_kl
    from aligndistil_cli.evaluation.stats import distinct_n, mean_ci95, win_rate

    mean, low, high = mean_ci95(run.scores)
    diffs = (run.logps.double() - run.ref_logps.double()).tolist()
    _, kl_low, kl_high = mean_ci95(diffs)
    return {"name": run.name, "path": run.path, "group": run.group, "reward": mean, "reward_low": low,
            "reward_high": high, "win_rate": win_rate(run.scores, baseline.scores),
            "kl": sequence_kl(run.logps, run.ref_logps), "kl_low": kl_low, "kl_high": kl_high,
            "length": sum(len(r) - 1 for r in run.responses) / len(run.responses),
            "distinct_2": distinct_n(run.texts, 2), "samples": len(run.responses)}


def _sample_records(runs: list[PolicyRun], prompts: list[tuple], samples_per_prompt: int) -> list[dict]:
    records = []
    for run in runs:
        for k, (response, text, score) in enumerate(zip(run.responses, run.texts, run.scores)):
            row_id, given, _, _ = prompts[k // samples_per_prompt]
            records.append({"model": run.name, "row_id": row_id, "prompt": given, "sample": k % samples_per_prompt,
                            "response": text, "score": score, "logp": float(run.logps[k]),
                            "ref_logp": float(run.ref_logps[k]), "length": len(response) - 1})
    return records


def policy_part(cfg: EvaluateConfig, device: torch.device) -> tuple[dict[str, Any], list[dict]]:
    """Part b: sample every policy (one model in memory at a time), then the reference, then judge."""
    from aligndistil_cli.stages.common import check_tokenizers, console, load_tokenizer_for
    from aligndistil_cli.stages.generate import load_prompts

    check_tokenizers(cfg, {"reference": cfg.reference, **dict(zip(cfg.model_names(), cfg.model))})
    tokenizer = load_tokenizer_for(cfg, cfg.reference)
    prompts = load_prompts(cfg.prompts, tokenizer, split=cfg.split, prompt_key=cfg.prompt_key,
                           max_prompt_length=cfg.max_prompt_length, limit=cfg.max_prompts)
    prompt_ids = [p[3] for p in prompts]
    vocab = config_vocab(cfg, [cfg.reference, *cfg.model], tokenizer)
    groups = list(cfg.group) if cfg.group else cfg.model_names()
    policies = [PolicyRun(n, m, g) for n, m, g in zip(cfg.model_names(), cfg.model, groups)]
    baseline = PolicyRun("reference", cfg.reference, "reference")
    for p in policies:
        console().print(f"evaluate: sampling {p.name} ({len(prompts)} prompts x {cfg.samples_per_prompt})")
        p.responses, p.logps = with_model(cfg, p.path, device, vocab, lambda m: _sample_and_score(
            cfg, m, tokenizer, prompt_ids, vocab, device))
        if same_model(p.path, cfg.reference):  # reuse: its own samples are the baseline's
            p.ref_logps = p.logps
            baseline = p if baseline.logps is None else baseline
    _reference_pass(cfg, policies, baseline, tokenizer, prompt_ids, vocab, device)
    runs = policies if any(p is baseline for p in policies) else [*policies, baseline]
    judge_name = _judge_all(cfg, runs, [p[2] for p in prompts], tokenizer, device)
    result = {"judge": judge_name, "prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
              "baseline": baseline.name, "policies": [policy_metrics(p, baseline) for p in policies]}
    return result, _sample_records(runs, prompts, cfg.samples_per_prompt)


# --------------------------------------------------------------------------------------------
# c. curves, files, orchestration


def _read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise AlignDistilError(f"{folder} has no metrics.jsonl", "pass training run folders to --runs")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a running or crashed job
    return records


def curves_part(runs: list[str], path: Path) -> dict[str, Any]:
    """Part c: curves.png from every run's metrics.jsonl (run names: folder names, made unique)."""
    from aligndistil_cli.evaluation.plots import plot_training_curves

    data: dict[str, list[dict]] = {}
    for run in runs:
        folder = Path(run)
        name, k = folder.resolve().name, 2
        while name in data:
            name, k = f"{folder.resolve().name}-{k}", k + 1
        data[name] = _read_metrics(folder)
    metrics = plot_training_curves(data, path)
    return {"runs": {n: str(r) for n, r in zip(data, runs)}, "metrics": metrics, "file": path.name}


def _frontier(policies: list[dict], path: Path) -> None:
    from aligndistil_cli.evaluation.plots import plot_frontier

    plot_frontier([{k: p[k] for k in ("name", "group", "kl", "reward", "reward_low", "reward_high")}
                   for p in policies], path)


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the requested parts, write the files and the run record; returns eval.json's content."""
    from aligndistil_cli.fsutil import write_json_atomic, write_text_atomic
    from aligndistil_cli.stages.runner import StageContext, run_stage

    def body(ctx: StageContext) -> dict[str, Any]:
        out, result = ctx.output, {}
        if cfg.runs:  # cheap: a bad run folder fails before any model is loaded
            result["curves"] = curves_part(cfg.runs, out / "curves.png")
        if cfg.pairs:
            result["reward_accuracy"] = reward_accuracy_part(cfg, ctx.device)
        if cfg.model:
            result["policy_quality"], samples = policy_part(cfg, ctx.device)
            write_text_atomic(out / "samples.jsonl", "".join(
                json.dumps(finite_or_none(s), ensure_ascii=False) + "\n" for s in samples))
            _frontier(result["policy_quality"]["policies"], out / "frontier.png")
            result["files"] = ["eval.json", "samples.jsonl", "frontier.png"]
        result["files"] = result.get("files", ["eval.json"]) + (["curves.png"] if cfg.runs else [])
        result = finite_or_none(result)
        write_json_atomic(out / "eval.json", {"config": cfg.to_dict(), **result})
        return result

    metrics = run_stage("evaluate", cfg, cfg.output, body)
    return {"config": cfg.to_dict(), **metrics}


# --------------------------------------------------------------------------------------------
# rendering


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _reward_table(acc: dict[str, dict]):
    from rich.table import Table

    table = Table(title="Reward accuracy (r(chosen) > r(rejected); ties score 0)")
    for col in ("reward", "formula", "accuracy", "ties", "pairs", "mean margin"):
        table.add_column(col, justify="left" if col in ("reward", "formula") else "right")
    for kind, s in acc.items():
        table.add_row(kind, s["formula"], _fmt(s["accuracy"]), str(s["ties"]), str(s["pairs"]),
                      _fmt(s["margin_mean"], 4))
    return table


def _policy_table(pq: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"Policy quality: judge {pq['judge']}, {pq['prompts']} prompts x "
                               f"{pq['samples_per_prompt']} samples, baseline {pq['baseline']}"))
    for col in ("model", "reward (95% CI)", "win rate", "KL to ref", "length", "distinct-2"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for p in pq["policies"]:
        ci = f" [{_fmt(p['reward_low'])}, {_fmt(p['reward_high'])}]" if p["reward_low"] is not None else ""
        table.add_row(escape(p["name"]), _fmt(p["reward"]) + ci, _fmt(p["win_rate"]), _fmt(p["kl"]),
                      _fmt(p["length"], 1), _fmt(p["distinct_2"]))
    return table


def render_evaluate(result: dict[str, Any], fmt: str) -> None:
    """Rich tables (``table``) or eval.json on stdout (``json``)."""
    if fmt == "json":
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.console import Console

    con = Console()
    if "reward_accuracy" in result:
        con.print(_reward_table(result["reward_accuracy"]))
    if "policy_quality" in result:
        con.print(_policy_table(result["policy_quality"]))
    if "curves" in result:
        con.print(f"curves: {', '.join(result['curves']['metrics'])} of {len(result['curves']['runs'])} run(s)")
    out = Path(result["config"]["output"])
    con.print("wrote " + ", ".join(str(out / f) for f in result.get("files", [])))
