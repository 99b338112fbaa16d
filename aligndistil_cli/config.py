"""Typed stage configs: one frozen dataclass per stage, resolved as flag > YAML > default.

A field is declared with :func:`option`, which carries the help text, the allowed choices and the
CLI spelling. The CLI builds every command's options from these fields (see
``aligndistil_cli.cli.command``), so a stage's options, its YAML keys and its saved
``config.json`` are one list that cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from aligndistil_cli.errors import AlignDistilError

REQUIRED = dataclasses.MISSING
CONFIG_FILE = "aligndistil_config.yaml"


def option(
    default: Any = REQUIRED,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    argument: bool = False,
    group: str = "Options",
) -> Any:
    """A config field plus its CLI metadata.

    Args:
        default: the default; ``REQUIRED`` for a field the user must give. Lists are copied.
        help: one line for ``--help``.
        choices: allowed string values (validated in ``__post_init__``).
        flag: CLI spelling when it differs from ``--field-name``.
        argument: a positional argument instead of an option.
        group: the ``--help`` panel the option appears under.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag,
            "argument": argument, "group": group}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    if default is REQUIRED:
        # Required fields still get a dataclass default (None) so that field order is free;
        # ``check_required`` enforces them after flags and YAML are merged.
        meta["required"] = True
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` stays ``list[str]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base class: validation, YAML loading with precedence, and serialisation."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise AlignDistilError(
                    f"{flag_name(f)} must be one of {', '.join(choices)}, got {value!r}",
                    f"pass {flag_name(f)} {choices[0]}",
                )
            object.__setattr__(self, f.name, _coerce(f, hints[f.name], value))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses override and raise AlignDistilError."""

    def check_required(self) -> None:
        missing = [flag_name(f) for f in dataclasses.fields(self)
                   if f.metadata.get("required") and getattr(self, f.name) in (None, [], "")]
        if missing:
            raise AlignDistilError(
                f"missing required option(s): {', '.join(missing)}",
                "give them on the command line or in the --config YAML file",
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def save(self, folder: str | Path) -> Path:
        """Write the resolved config as ``aligndistil_config.yaml`` (re-usable with --config)."""
        import yaml

        from aligndistil_cli.fsutil import write_text_atomic

        path = Path(folder) / CONFIG_FILE
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def resolve(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        """Build the config: explicit ``overrides`` beat the YAML file, which beats defaults."""
        values: dict[str, Any] = load_yaml(yaml_path, cls) if yaml_path else {}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        config = cls(**values)
        config.check_required()
        return config


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _coerce(f: dataclasses.Field, annotation: Any, value: Any) -> Any:
    """Coerce YAML scalars to the declared type (YAML gives ints for floats, str for paths)."""
    if value is None:
        return None
    kind = base_type(annotation)
    try:
        if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if kind is str and isinstance(value, (str, int, float, Path)):
            return str(value)
        if typing.get_origin(kind) is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [str(v) for v in items]
    except ValueError as exc:
        raise AlignDistilError(f"{flag_name(f)}: cannot read {value!r} as {kind.__name__}",
                               "fix the value in the YAML file or on the command line") from exc
    if kind is bool and not isinstance(value, bool):
        raise AlignDistilError(f"{flag_name(f)} must be true or false, got {value!r}",
                               "use true/false in YAML or the --x/--no-x flags")
    return value


def load_yaml(path: str | Path, cls: type[StageConfig]) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping and reject keys the stage does not know."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AlignDistilError(f"config file {path} does not exist", "check the --config path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise AlignDistilError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}",
                               "fix the syntax (keys are the option names with underscores)") from exc
    if not isinstance(data, dict):
        raise AlignDistilError(f"config file {path} must hold a mapping of option: value",
                               "write one 'key: value' per line")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    data.pop("stage_config", None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AlignDistilError(
            f"unknown key(s) in {path}: {', '.join(unknown)}",
            f"valid keys for this stage: {', '.join(sorted(known))}",
        )
    return data


def dump(config: StageConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, default=str)
