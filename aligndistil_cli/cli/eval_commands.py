"""The evaluation commands: generate, evaluate, inspect-rewards (registered by ``register(app)``)."""

from __future__ import annotations

import typer

from aligndistil_cli.cli.command import stage_command
from aligndistil_cli.stages.evaluate import EvaluateConfig, render_evaluate, run_evaluate
from aligndistil_cli.stages.generate import GenerateConfig, render_generate, run_generate
from aligndistil_cli.stages.inspect import InspectRewardsConfig, render_inspect, run_inspect

GENERATE_EXAMPLES = """
aligndistil generate --model runs/aligndistil --prompts eval_prompts.jsonl --output runs/gens/aligndistil.jsonl
aligndistil generate --model runs/dpo --prompts alpaca_eval.json --prompt-key instruction --format alpaca-eval --generator dpo --output runs/gens/dpo.jsonl
aligndistil generate --model runs/smollm2 --prompts pairs.jsonl --samples-per-prompt 4 --max-new-tokens 128 --output gens.jsonl
"""

EVALUATE_EXAMPLES = """
aligndistil evaluate --pairs test_pairs.jsonl --dpo runs/dpo --reference runs/smollm2 --reverse-dpo runs/rev --output runs/eval-rewards
aligndistil evaluate --model runs/smollm2 --model runs/dpo --model runs/aligndistil --reference runs/smollm2 --prompts eval_prompts.jsonl --judge sentiment --output runs/eval
aligndistil evaluate --model runs/dpo --model runs/ad --name dpo --name aligndistil --reference runs/smollm2 --prompts eval_prompts.jsonl --judge runs/reward-model --runs runs/dpo --runs runs/ad --output runs/eval --format json
"""

INSPECT_EXAMPLES = """
aligndistil inspect-rewards --dpo runs/dpo --reverse-dpo runs/rev --reference runs/smollm2 --prompt "Write a review:" --response "A wonderful film."
aligndistil inspect-rewards --dpo runs/dpo --reverse-dpo runs/rev --data pairs.jsonl --index 3 --responses rejected
aligndistil inspect-rewards --teacher runs/teacher --index 0 --tokenizer runs/smollm2 --format json
"""


def _generate(cfg: GenerateConfig) -> None:
    render_generate(run_generate(cfg))


def _evaluate(cfg: EvaluateConfig) -> None:
    render_evaluate(run_evaluate(cfg), cfg.format)


def _inspect(cfg: InspectRewardsConfig) -> None:
    render_inspect(run_inspect(cfg), cfg.format)


def register(app: typer.Typer) -> None:
    """Add ``generate``, ``evaluate`` and ``inspect-rewards`` to ``app``."""
    stage_command(app, "generate", GenerateConfig, _generate,
                  "Sample responses for a prompt file (resumable JSONL, optional AlpacaEval JSON).",
                  GENERATE_EXAMPLES)
    stage_command(app, "evaluate", EvaluateConfig, _evaluate,
                  "Reward accuracy, judged policy quality vs the reference (reward, win rate, KL), plots.",
                  EVALUATE_EXAMPLES)
    stage_command(app, "inspect-rewards", InspectRewardsConfig, _inspect,
                  "Per-token DPO/contrastive rewards, alpha_t and teacher top tokens of one response.",
                  INSPECT_EXAMPLES)
