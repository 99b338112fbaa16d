"""The run record ``aligndistil.json`` every stage writes into its output folder.

It says which stage produced the folder, with which resolved config, from which inputs
(fingerprints), with which package versions, when, and with what result. ``"status":
"complete"`` is written only once every other artifact of the stage is in place, so tools and
recipes can trust a folder by reading one field.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligndistil_cli import __version__
from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import write_json_atomic

RECORD_FILE = "aligndistil.json"


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"aligndistil": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "safetensors", "typer", "rich"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def read_record(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return None


def is_complete(folder: str | Path, stage: str | None = None) -> bool:
    record = read_record(folder)
    return bool(record and record.get("status") == "complete"
                and (stage is None or record.get("stage") == stage))


def prepare_output(folder: str | Path, stage: str, *, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an output folder that holds another stage's finished work (unless --overwrite).

    A folder with this stage's complete run is also refused (it would be overwritten), except
    when resuming; recipes skip complete stages themselves by calling ``is_complete``.
    """
    folder = Path(folder)
    record = read_record(folder)
    if record and not overwrite:
        done = record.get("status") == "complete"
        other = record.get("stage") != stage
        if other and (done or not resume):
            raise AlignDistilError(
                f"{folder} holds a {record.get('status')} '{record.get('stage')}' run",
                "choose another --output, or pass --overwrite to replace it",
            )
        if done and not resume:
            raise AlignDistilError(f"{folder} already holds a complete '{stage}' run",
                                   "choose another --output, or pass --overwrite to replace it")
    if folder.exists() and not folder.is_dir():
        raise AlignDistilError(f"{folder} exists and is not a folder", "choose another --output")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class RunRecord:
    """Accumulates the record of one stage run; ``write`` persists it atomically."""

    folder: Path
    stage: str
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def write(self, status: str, metrics: dict[str, Any] | None = None) -> None:
        record = {
            "stage": self.stage,
            "status": status,
            "config": self.config,
            "inputs": self.inputs,
            "versions": package_versions(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "ended_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - self.started, 3),
            "metrics": metrics or {},
            **self.extra,
        }
        write_json_atomic(Path(self.folder) / "aligndistil.json", record)
