"""The ``aligndistil`` command tree. Each command: parse options -> config -> library -> render."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from aligndistil_cli import __version__
from aligndistil_cli.cli.command import stage_command
from aligndistil_cli.stages.dpo import DPOConfig, run_dpo
from aligndistil_cli.stages.env import EnvConfig, collect_env

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


def version_callback(value: bool) -> None:
    if value:
        print(f"aligndistil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """AlignDistil as a CLI."""


def _register_optional() -> None:
    """Commands whose modules import heavier dependencies register here."""
    from aligndistil_cli.cli import more_commands  # noqa: F401  (registers on import)


def main() -> None:
    _register_optional()
    app()
