"""Config resolution: flag > YAML > default, unknown keys, choices, saved config reloads."""

from __future__ import annotations

import dataclasses

import pytest
import typer
import yaml
from typer.testing import CliRunner

from aligndistil_cli.cli.command import stage_command
from aligndistil_cli.config import CONFIG_FILE, StageConfig, option
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.stages.dpo import DPOConfig


@dataclasses.dataclass(frozen=True)
class DemoConfig(StageConfig):
    """Demo."""

    name: str = option(help="a required value")
    beta: float = option(0.1, "beta")
    steps: int = option(3, "steps")
    flag: bool = option(True, "flag")
    mode: str = option("a", "mode", choices=("a", "b"))
    models: list[str] = option([], "repeatable")


def _app(seen: list):
    app = typer.Typer()
    stage_command(app, "demo", DemoConfig, seen.append, "demo", "aligndistil demo --name x")

    @app.command("noop")
    def _noop() -> None:  # a second command keeps 'demo' a sub-command
        pass

    return app


def test_precedence_flag_beats_yaml_beats_default(tmp_path):
    (tmp_path / "c.yaml").write_text("beta: 0.5\nsteps: 7\nname: from-yaml\n")
    seen: list = []
    result = CliRunner().invoke(_app(seen), ["demo", "--config", str(tmp_path / "c.yaml"), "--steps", "9"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert cfg.steps == 9          # flag beats YAML
    assert cfg.beta == 0.5         # YAML beats default
    assert cfg.name == "from-yaml"
    assert cfg.mode == "a"         # default


def test_bool_flag_false_beats_yaml_true(tmp_path):
    (tmp_path / "c.yaml").write_text("flag: true\nname: x\n")
    seen: list = []
    CliRunner().invoke(_app(seen), ["demo", "--config", str(tmp_path / "c.yaml"), "--no-flag"])
    assert seen[0].flag is False


def test_unknown_yaml_key_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\nbetta: 0.2\n")
    result = CliRunner().invoke(_app([]), ["demo", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert "betta" in result.output


def test_missing_required_and_bad_choice_exit_2():
    result = CliRunner().invoke(_app([]), ["demo"])
    assert result.exit_code == 2 and "--name" in result.output
    result = CliRunner().invoke(_app([]), ["demo", "--name", "x", "--mode", "z"])
    assert result.exit_code == 2 and "--mode" in result.output


def test_repeatable_option_and_yaml_types(tmp_path):
    seen: list = []
    CliRunner().invoke(_app(seen), ["demo", "--name", "x", "--models", "a", "--models", "b"])
    assert seen[0].models == ["a", "b"]
    (tmp_path / "c.yaml").write_text("name: x\nbeta: 1\n")  # YAML int for a float field
    assert DemoConfig.resolve(tmp_path / "c.yaml").beta == 1.0
    (tmp_path / "bad.yaml").write_text("name: x\nsteps: many\n")
    with pytest.raises(AlignDistilError, match="--steps"):
        DemoConfig.resolve(tmp_path / "bad.yaml")


def test_saved_config_reloads_identically(tmp_path):
    cfg = DPOConfig.resolve(None, {"model": "m", "data": "d.jsonl", "output": "o", "beta": 0.2})
    path = cfg.save(tmp_path)
    assert path.name == CONFIG_FILE
    again = DPOConfig.resolve(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["beta"] == 0.2


def test_dpo_config_defaults_follow_official_recipe():
    cfg = DPOConfig.resolve(None, {"model": "m", "data": "d", "output": "o"})
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.warmup_ratio, cfg.max_length, cfg.beta) == \
        (1e-6, 128, 1.0, 0.1, 2048, 0.1)
