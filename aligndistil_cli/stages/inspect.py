"""inspect-rewards: per-token rewards, alpha_t and the teacher's top tokens of one response.

Live mode scores one (prompt, response) with the models: ``--prompt/--response``, or row
``--index`` of ``--data`` (its ``--responses chosen|rejected``). Cache mode (``--teacher CACHE
--index N``) reads sequence N of a build-teacher cache and loads no model; ``--tokenizer DIR``
decodes the ids (without it the ids are shown).

Row j is response token j; its numbers come from the distributions predicting it (logit
position ``response_start + j - 1``):
- ``dpo_reward``         beta * (log p_dpo(y_j) - log p_ref(y_j))  (live, with --reference);
- ``contrastive_reward`` beta * (log p_dpo(y_j) - log p_rev(y_j))  (live, with --reverse-dpo);
- ``alpha``, ``tvd``      the teacher's alpha_t = alpha_max * TVD_t + eps (or the constant);
- ``teacher_top``        the teacher's most likely tokens with their probabilities.
A cache holds the reward of its own contrast only (contrastive for ``reverse``, DPO for
``reference``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.stages.options import DataKeys, ModelOptions, TeacherOptions

REWARD_KEYS = ("dpo_reward", "contrastive_reward")


@dataclass(frozen=True)
class InspectRewardsConfig(TeacherOptions, DataKeys, ModelOptions):
    """Show one response token by token: DPO and contrastive token rewards, alpha_t, TVD and the
    teacher's top tokens; live from the models or from a build-teacher cache (--teacher)."""

    dpo: str | None = option(None, "The DPO model (live mode).", group="Model")
    reverse_dpo: str | None = option(None, "The reverse-DPO model (contrastive reward; the teacher's "
                                     "negative for --contrast reverse).", group="Model")
    reference: str | None = option(None, "The reference model (DPO reward; the teacher's negative for "
                                   "--contrast reference).", group="Model")
    prompt: str | None = option(None, "Prompt text (live mode, with --response).", group="Input")
    response: str | None = option(None, "Response text (live mode, with --prompt).", group="Input")
    data: str | None = option(None, "Preference data; row --index is shown (live mode).", group="Input")
    index: int = option(0, "Row of --data, or sequence of the --teacher cache.", group="Input")
    responses: str = option("chosen", "Which response of the --data row.", choices=("chosen", "rejected"),
                            group="Input")
    teacher: str | None = option(None, "A build-teacher cache folder (cache mode: no model is loaded).",
                                 group="Cache")
    tokenizer: str | None = option(None, "Tokenizer folder to decode cache ids (cache mode).", group="Cache")
    top: int = option(3, "Teacher tokens shown per position.", group="Output")
    format: str = option("table", "table, or json (a list of per-token objects on stdout).",
                         choices=("table", "json"), group="Output")

    def validate(self) -> None:
        if self.top < 1:
            raise AlignDistilError("--top must be at least 1", "pass e.g. --top 3")
        if self.teacher:
            live = [f for f, v in (("--dpo", self.dpo), ("--reverse-dpo", self.reverse_dpo),
                                   ("--reference", self.reference), ("--prompt", self.prompt),
                                   ("--response", self.response), ("--data", self.data)) if v]
            if live:
                raise AlignDistilError(f"--teacher (cache mode) cannot be combined with {', '.join(live)}",
                                       "inspect a cache with --teacher --index N, or the models without --teacher")
            return
        self._validate_live()

    def _validate_live(self) -> None:
        spec = self.teacher_spec()
        if not self.dpo:
            raise AlignDistilError("inspect-rewards needs --dpo (live) or --teacher CACHE",
                                   "pass --dpo DIR --reverse-dpo DIR, or --teacher CACHE --index N")
        if spec.contrast == "reverse" and not self.reverse_dpo:
            raise AlignDistilError("--contrast reverse needs --reverse-dpo", "pass --reverse-dpo DIR")
        if spec.contrast == "reference" and not self.reference:
            raise AlignDistilError("--contrast reference needs --reference", "pass --reference DIR")
        text_given = self.prompt is not None or self.response is not None
        if text_given == bool(self.data) or (text_given and (not self.prompt or not self.response)):
            raise AlignDistilError("give either --prompt TEXT --response TEXT, or --data PATH --index N",
                                   "pass exactly one of the two inputs")


# --------------------------------------------------------------------------------------------
# live mode


def _encode(cfg: InspectRewardsConfig, tokenizer: Any) -> tuple[list[int], list[int], str]:
    """(prompt ids, response ids ending with EOS, a description of the input)."""
    from aligndistil_cli.data import load_rows, prepare_pairs, prepare_responses

    limits = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, on_invalid="error")
    if not cfg.data:
        ex, _ = prepare_responses([{"prompt": cfg.prompt, "response": cfg.response}], tokenizer, **limits)
        return ex[0].prompt_ids, ex[0].response_ids, "--prompt/--response"
    rows = load_rows(cfg.data, split=cfg.split)
    if not 0 <= cfg.index < len(rows):
        raise AlignDistilError(f"--index {cfg.index} is out of range: {cfg.data} has {len(rows)} rows",
                               f"pass --index 0..{len(rows) - 1}")
    pairs, _ = prepare_pairs([rows[cfg.index]], tokenizer, prompt_key=cfg.prompt_key, chosen_key=cfg.chosen_key,
                             rejected_key=cfg.rejected_key, **limits)
    pair = pairs[0]
    ids = pair.chosen_ids if cfg.responses == "chosen" else pair.rejected_ids
    return pair.prompt_ids, ids, f"{cfg.data} row {cfg.index} ({cfg.responses})"


def _logit_rows(cfg: InspectRewardsConfig, path: str, prompt_ids: list[int], response_ids: list[int],
                vocab: int, pad_id: int, device: torch.device) -> torch.Tensor:
    """fp32 logits [n, V] on CPU of the positions predicting each response token."""
    from aligndistil_cli.batching import make_batch
    from aligndistil_cli.modeling import head_weight, response_rows
    from aligndistil_cli.stages.evaluate import with_model
    from aligndistil_cli.teacher.compose import HeadLogits

    batch = make_batch([prompt_ids], [response_ids], pad_id).to(device)

    @torch.no_grad()
    def rows(model: torch.nn.Module) -> torch.Tensor:
        r = response_rows(model, batch)
        return HeadLogits(r.hidden, head_weight(model), vocab).rows(slice(0, len(r.next_ids))).cpu()

    return with_model(cfg, path, device, vocab, rows)


def inspect_live(cfg: InspectRewardsConfig) -> dict[str, Any]:
    """Score the response with the models (loaded one at a time)."""
    from aligndistil_cli.models import resolve_device
    from aligndistil_cli.stages import common
    from aligndistil_cli.stages.evaluate import config_vocab
    from aligndistil_cli.teacher.compose import compose_teacher, token_reward, topk_rows

    spec, device = cfg.teacher_spec(), resolve_device(cfg.device)
    paths = {k: v for k, v in (("dpo", cfg.dpo), ("rev", cfg.reverse_dpo), ("ref", cfg.reference)) if v}
    common.check_tokenizers(cfg, paths)
    tokenizer = common.load_tokenizer_for(cfg, cfg.dpo)
    prompt_ids, response_ids, source = _encode(cfg, tokenizer)
    vocab = config_vocab(cfg, list(paths.values()), tokenizer)
    z = {k: _logit_rows(cfg, p, prompt_ids, response_ids, vocab, tokenizer.pad_token_id, device)
         for k, p in paths.items()}
    teacher = compose_teacher(z["dpo"], z["rev" if spec.contrast == "reverse" else "ref"], spec)
    top_ids, top_lp = topk_rows(teacher.logprobs, cfg.top)
    nxt = torch.tensor(response_ids)
    rewards = {}
    if "ref" in z:
        rewards["dpo_reward"] = token_reward(z["dpo"], z["ref"], nxt, spec.beta)
    if "rev" in z:
        rewards["contrastive_reward"] = token_reward(z["dpo"], z["rev"], nxt, spec.beta)
    tokens = token_rows(tokenizer, nxt, len(prompt_ids), teacher.alpha, teacher.tvd, rewards, top_ids, top_lp)
    return {"mode": "live", "source": source, "teacher": {"variant": cfg.variant_name(), **spec.to_dict()},
            "tokens": tokens}


# --------------------------------------------------------------------------------------------
# cache mode


def inspect_cache(cfg: InspectRewardsConfig) -> dict[str, Any]:
    """Read sequence ``cfg.index`` of a teacher cache; no model is loaded."""
    from aligndistil_cli.teacher.cache import TeacherCache, check_tokenizer
    from aligndistil_cli.teacher.compose import topk_rows

    cache = TeacherCache(cfg.teacher)
    if not -len(cache) <= cfg.index < len(cache):
        raise AlignDistilError(f"--index {cfg.index} is out of range: the cache holds {len(cache)} sequences",
                               f"pass --index 0..{len(cache) - 1}")
    rec = cache[cfg.index]
    tokenizer = None
    if cfg.tokenizer:
        from aligndistil_cli.models import load_tokenizer, tokenizer_fingerprint

        tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
        check_tokenizer(cache, tokenizer_fingerprint(tokenizer), "--tokenizer")
    if cache.dense:
        top_ids, top_lp = topk_rows(rec.logprobs.float(), cfg.top)
    else:
        top_ids, top_lp = rec.topk_ids[:, : cfg.top], rec.topk_logprobs[:, : cfg.top].float()
    teacher = cache.manifest["teacher"]
    key = "contrastive_reward" if teacher.get("contrast") == "reverse" else "dpo_reward"
    start = int(rec.response_start)
    tokens = token_rows(tokenizer, rec.input_ids[start:], start, rec.alpha.float(), rec.tvd.float(),
                        {key: rec.reward.float()}, top_ids, top_lp)
    return {"mode": "cache", "source": f"{cfg.teacher} sequence {cfg.index} (example {rec.example_id})",
            "teacher": teacher, "tokens": tokens}


# --------------------------------------------------------------------------------------------
# shared


def _token_text(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return f"<{token_id}>"
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)


def token_rows(tokenizer: Any, next_ids: torch.Tensor, response_start: int, alpha: torch.Tensor,
               tvd: torch.Tensor, rewards: dict[str, torch.Tensor], top_ids: torch.Tensor,
               top_lp: torch.Tensor) -> list[dict[str, Any]]:
    """One dict per response token j (predicted from logit position response_start + j - 1)."""
    out = []
    for j, tid in enumerate(next_ids.tolist()):
        row: dict[str, Any] = {"index": j, "position": response_start + j, "token_id": int(tid),
                               "token": _token_text(tokenizer, tid)}
        row.update({k: float(v[j]) for k, v in rewards.items()})
        row.update({"alpha": float(alpha[j]), "tvd": float(tvd[j])})
        row["teacher_top"] = [{"id": int(i), "token": _token_text(tokenizer, i), "prob": float(lp.exp())}
                              for i, lp in zip(top_ids[j].tolist(), top_lp[j])]
        out.append(row)
    return out


def run_inspect(cfg: InspectRewardsConfig) -> dict[str, Any]:
    return inspect_cache(cfg) if cfg.teacher else inspect_live(cfg)


# --------------------------------------------------------------------------------------------
# rendering


def _large(values: list[float]) -> float:
    """|r| at or above this is shown bold: the sequence's 90th percentile of |r| (positive)."""
    mags = sorted(abs(v) for v in values)
    return max(mags[int(0.9 * (len(mags) - 1))], 1e-12) if mags else float("inf")


def _reward_cell(value: float, large: float) -> str:
    colour = "green" if value > 0 else "red" if value < 0 else "dim"
    style = f"bold {colour}" if abs(value) >= large and value != 0 else colour
    return f"[{style}]{value:+.4f}[/{style}]"


def _shown(text: str, quoted: bool = False) -> str:
    """Markup-safe text with escapes for control characters; ``quoted`` makes whitespace visible."""
    from rich.markup import escape

    shown = json.dumps(text, ensure_ascii=False)
    return escape(shown if quoted else shown[1:-1])


def render_inspect(result: dict[str, Any], fmt: str) -> None:
    """A rich table, one row per response token (or the token list as JSON on stdout)."""
    if fmt == "json":
        print(json.dumps(result["tokens"], indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    tokens = result["tokens"]
    keys = [k for k in REWARD_KEYS if tokens and k in tokens[0]]
    large = {k: _large([t[k] for t in tokens]) for k in keys}
    sums = ", ".join(f"sum {k} {sum(t[k] for t in tokens):+.4f}" for k in keys)
    table = Table(title=f"inspect-rewards ({result['mode']}): {_shown(result['source'])}",
                  caption=f"{len(tokens)} response tokens; {sums}; teacher {result['teacher'].get('variant', '')}")
    for col in ("j", "token", *keys, "alpha", "tvd", "teacher top"):
        table.add_column(col, justify="right" if col not in ("token", "teacher top") else "left")
    for t in tokens:
        top = "  ".join(f"{_shown(x['token'], True)} {x['prob']:.3f}" for x in t["teacher_top"])
        table.add_row(str(t["index"]), _shown(t["token"], True), *(_reward_cell(t[k], large[k]) for k in keys),
                      f"{t['alpha']:.3f}", f"{t['tvd']:.3f}", top)
    Console().print(table)
