"""Turn a stage config dataclass into a Typer command.

Every option of a command is a field of its config dataclass (see ``aligndistil_cli.config``).
Options default to ``None`` on the command line so that an explicit flag can be told from an
omitted one: the flag wins over ``--config`` YAML, which wins over the dataclass default.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from typing import Annotated, Any, Callable, Optional

import typer

from aligndistil_cli.config import StageConfig, base_type, flag_name
from aligndistil_cli.errors import AlignDistilError

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", help="YAML file of option values; explicit flags override it.",
                 rich_help_panel="Config"),
]


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("required"):
        return "required"
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is None or default == []:
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def _parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    kind = base_type(annotation)
    meta = f.metadata
    help_text = meta.get("help", "")
    if meta.get("choices"):
        help_text += f" ({'|'.join(meta['choices'])})"
    shown = _default_text(f)
    if shown:
        help_text += f" (default: {shown})"
    if meta.get("argument"):
        info = typer.Argument(help=help_text, show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=None, annotation=Annotated[Optional[kind], info])
    name = flag_name(f)
    decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
    info = typer.Option(*decls, help=help_text, show_default=False,
                        rich_help_panel=meta.get("group", "Options"))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], info])


def stage_command(
    app: typer.Typer,
    name: str,
    config_cls: type[StageConfig],
    run: Callable[[StageConfig], Any],
    summary: str,
    examples: str,
) -> None:
    """Register ``name`` on ``app``: options from ``config_cls``, body ``run(config)``.

    Args:
        summary: the one line shown by ``aligndistil --help``.
        examples: worked example(s) shown at the end of the command's ``--help``.
    """
    hints = typing.get_type_hints(config_cls)
    params = [_parameter(f, hints[f.name]) for f in dataclasses.fields(config_cls)]
    positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    config_param = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=ConfigOpt)

    def command(**kwargs: Any) -> None:
        yaml_path = kwargs.pop("config", None)
        overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
        overrides = {k: v for k, v in overrides.items() if v is not None and v != []}
        with user_errors():
            cfg = config_cls.resolve(yaml_path, overrides)
            if getattr(cfg, "nproc_per_node", 1) > 1 and "WORLD_SIZE" not in os.environ:
                relaunch_under_torchrun(cfg.nproc_per_node)
            run(cfg)

    command.__signature__ = inspect.Signature(positional + keyword + [config_param])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    command.__name__ = name.replace("-", "_")
    command.__doc__ = f"{summary}\n\n{config_cls.__doc__ or ''}".strip()
    app.command(name, help=command.__doc__, short_help=summary,
                epilog=_examples_epilog(examples))(command)


def _examples_epilog(examples: str) -> str:
    lines = [ln.strip() for ln in examples.strip().splitlines() if ln.strip()]
    return "Examples:\n\n" + "\n\n".join(f"  $ {ln}" for ln in lines)


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node N -m aligndistil_cli ...``."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        argv.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "aligndistil_cli", *argv]
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


class user_errors:
    """Render AlignDistilError as one line plus remedy and exit 2 (traceback with ALIGNDISTIL_DEBUG=1)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from aligndistil_cli.training.loop import Interrupted

        if isinstance(exc, Interrupted):
            sys.stderr.write(f"interrupted: checkpoint saved at {exc.checkpoint}; continue with --resume\n")
            raise typer.Exit(exc.exit_code)
        if exc is None or not isinstance(exc, AlignDistilError):
            return False
        if os.environ.get("ALIGNDISTIL_DEBUG"):
            return False
        from rich.console import Console
        from rich.markup import escape

        hint = f" [dim]→ {escape(exc.hint)}[/dim]" if exc.hint else ""
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(exc.message)}{hint}")
        sys.stderr.flush()
        raise typer.Exit(exc.exit_code)
