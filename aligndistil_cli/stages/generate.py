"""generate: sample responses from a policy for a prompt file, resumably, as JSONL (and AlpacaEval).

Output layout:
- ``--output FILE.jsonl`` always: one JSON object per sample, ``{"row_id", "prompt", "response",
  "sample", "generator"}``, appended chunk by chunk (complete lines only), so an interrupted run
  resumes by re-running the same command: prompts whose samples are all present are skipped.
  ``prompt`` is the prompt as given (a string, or the message list for chat-format rows), so
  ``build-teacher --responses generations --data FILE.jsonl`` re-templates the same prompt ids.
- ``--format alpaca-eval`` additionally writes ``FILE.alpaca_eval.json`` next to it (written
  atomically once the JSONL is complete): AlpacaEval's JSON list of ``{instruction, output,
  generator}``, one entry per prompt (sample 0; AlpacaEval expects one output per instruction).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligndistil_cli.config import option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.stages.options import ModelOptions

FORMATS = ("jsonl", "alpaca-eval")


@dataclass(frozen=True)
class GenerateConfig(ModelOptions):
    """Sample --samples-per-prompt responses per prompt of --prompts with the model's chat template
    and append them to --output (JSONL). Re-running the same command resumes: finished prompts are
    skipped. --format alpaca-eval also writes FILE.alpaca_eval.json (AlpacaEval's model outputs)."""

    model: str = option(help="Policy model folder (or hub id).", group="Model")
    prompts: str = option(help="Prompt file: a prompt column (string or messages) or preference data.",
                          group="Data")
    output: str = option(help="Output JSONL file (appended to; resumable).", group="Run")
    split: str = option("train", "Split of a dataset folder or hub dataset.", group="Data")
    prompt_key: str = option("prompt", "Column holding the prompt (string or message list).", group="Data")
    max_prompt_length: int = option(1024, "Longest prompt in tokens (cut from the left).", group="Data")
    max_examples: int | None = option(None, "Use only the first N valid prompts.", group="Data")
    max_new_tokens: int = option(256, "Longest sampled response.", group="Sampling")
    temperature: float = option(1.0, "Sampling temperature (0 = greedy).", group="Sampling")
    top_p: float = option(1.0, "Nucleus sampling threshold (1.0 = full distribution).", group="Sampling")
    samples_per_prompt: int = option(1, "Responses sampled per prompt.", group="Sampling")
    seed: int = option(0, "Sampling seed (fixed seed + batch size + prompts = same samples on CPU).",
                       group="Sampling")
    batch_size: int = option(16, "Sequences per generate() call.", group="Sampling")
    format: str = option("jsonl", "jsonl, or alpaca-eval: also write FILE.alpaca_eval.json.",
                         choices=FORMATS, group="Run")
    generator: str | None = option(None, "Generator name written in every record (default: the model "
                                   "folder's name).", group="Run")

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.samples_per_prompt < 1 or self.batch_size < 1:
            raise AlignDistilError("--max-new-tokens, --samples-per-prompt and --batch-size must be >= 1",
                                   "pass positive values")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise AlignDistilError("need --temperature >= 0 and 0 < --top-p <= 1", "e.g. --temperature 1 --top-p 1")
        if self.output and Path(self.output).is_dir():
            raise AlignDistilError(f"--output {self.output} is a folder", "pass a file such as gens.jsonl")


def model_name(path: str) -> str:
    """Folder name of a local model (``runs/dpo/`` -> ``dpo``), last part of a hub id."""
    p = Path(path).expanduser()
    return (p.resolve().name if p.exists() else p.name) or str(path)


def alpaca_path(output: str | Path) -> Path:
    """``gens.jsonl`` -> ``gens.alpaca_eval.json`` (next to the JSONL)."""
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(stem + ".alpaca_eval.json")


def load_prompts(path: str, tokenizer: Any, *, split: str, prompt_key: str, max_prompt_length: int,
                 limit: int | None) -> list[tuple[int, Any, str, list[int]]]:
    """Valid prompts of ``path`` as ``(row_id, prompt as given, prompt text, prompt ids)``.

    "As given" is the original string, or the message list (chat rows and preference rows without a
    prompt column), so that writing it back lets later stages re-template the same ids.
    """
    from aligndistil_cli.data import ROW_ID_KEY, load_rows, prepare_prompts
    from aligndistil_cli.stages.common import show_report

    rows = load_rows(path, split=split)
    examples, report = prepare_prompts(rows, tokenizer, prompt_key=prompt_key,
                                       max_prompt_length=max_prompt_length, on_invalid="skip")
    show_report(report)
    if limit:
        examples = examples[:limit]
    if not examples:
        raise AlignDistilError(f"no usable prompts in {path}", "check --prompt-key and the validation table")
    by_id = {row.get(ROW_ID_KEY, i): row for i, row in enumerate(rows) if isinstance(row, dict)}
    out = []
    for e in examples:
        raw = by_id.get(e.row_id, {}).get(prompt_key)
        given = e.prompt_text if isinstance(raw, str) else e.prompt_messages
        out.append((e.row_id, given, e.prompt_text, e.prompt_ids))
    return out


def _read_records(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def _alpaca_records(records: list[dict]) -> list[dict]:
    """Sample 0 of each prompt, with the prompt as plain text (AlpacaEval's ``instruction``)."""
    out = []
    for r in records:
        if r.get("sample", 0) != 0:
            continue
        prompt = r["prompt"]
        if isinstance(prompt, list):  # a message list: the last user turn is the instruction
            users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
            prompt = users[-1] if users else "\n\n".join(m.get("content", "") for m in prompt)
        out.append({**r, "prompt": prompt})
    return out


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Sample into ``cfg.output``; returns counts and the files written."""
    from aligndistil_cli.generation import generate_to_jsonl, write_alpaca_eval
    from aligndistil_cli.models import resolve_device
    from aligndistil_cli.stages import common

    device = resolve_device(cfg.device)
    tokenizer = common.load_tokenizer_for(cfg, cfg.model)
    prompts = load_prompts(cfg.prompts, tokenizer, split=cfg.split, prompt_key=cfg.prompt_key,
                           max_prompt_length=cfg.max_prompt_length, limit=cfg.max_examples)
    model = common.load_frozen(cfg, cfg.model, device)
    vocab = common.shared_vocab(tokenizer, model=model)
    generator = cfg.generator or model_name(cfg.model)
    written = generate_to_jsonl(
        model, tokenizer, [(row_id, given, ids) for row_id, given, _, ids in prompts], cfg.output,
        generator_name=generator, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, samples_per_prompt=cfg.samples_per_prompt, batch_size=cfg.batch_size,
        seed=cfg.seed, vocab_size=vocab)
    records = _read_records(Path(cfg.output))
    order = {row_id: i for i, (row_id, *_rest) in enumerate(prompts)}
    result = {"output": str(cfg.output), "generator": generator, "prompts": len(prompts),
              "records": len(records), "written": written, "skipped_records": len(records) - written,
              "complete_prompts": len({r["row_id"] for r in records} & set(order))}
    if cfg.format == "alpaca-eval":
        chosen = sorted((r for r in records if r["row_id"] in order),
                        key=lambda r: (order[r["row_id"]], r["sample"]))
        path = alpaca_path(cfg.output)
        write_alpaca_eval(_alpaca_records(chosen), path)
        result["alpaca_eval"] = str(path)
    return result


def render_generate(result: dict[str, Any]) -> None:
    """One summary line on stderr (stdout stays free for pipes)."""
    from aligndistil_cli.stages.common import console

    extra = f", AlpacaEval file {result['alpaca_eval']}" if result.get("alpaca_eval") else ""
    console().print(f"[bold]generate[/bold]: {result['written']} new samples "
                    f"({result['skipped_records']} already present) for {result['prompts']} prompts "
                    f"-> {result['output']}{extra}")
