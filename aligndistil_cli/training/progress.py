"""Progress reporting for training loops: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for k in keys:
        if k in metrics and isinstance(metrics[k], (int, float)):
            v = metrics[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class Reporter:
    """Shows step, loss, lr and ETA. Silent on non-zero ranks (``enabled=False``)."""

    SHOWN = ("loss", "lr", "kl", "mean_alpha", "rewards/accuracies", "rewards/margins")

    def __init__(self, description: str, enabled: bool = True, stream=None, unit: str = "optimizer steps") -> None:
        self.description, self.unit = description, unit
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = enabled and self.stream.isatty()
        self._progress = None
        self._task = None
        self._start = time.time()
        self.total = 0

    def start(self, total: int, done: int = 0) -> None:
        self.total, self._start, self._done0 = total, time.time(), done
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[info]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=total, completed=done, info="")
        elif self.enabled:
            print(f"{self.description}: {total} {self.unit} (starting at {done})", file=self.stream, flush=True)

    def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        info = _fmt(metrics or {}, self.SHOWN)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif metrics is not None:
            rate = (step - self._done0) / max(1e-9, time.time() - self._start)
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(f"{self.description} step {step}/{self.total} {info} eta={eta:.0f}s", file=self.stream, flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
