"""Plots: the reward/KL frontier and training curves, as PNG files written atomically.

matplotlib is imported inside the functions (it is slow to import and only ``eval``/``plot``
need it), and only its object-oriented API is used: a ``Figure`` rendered by the Agg canvas,
so no pyplot global state and no display are involved.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from aligndistil_cli.errors import AlignDistilError
from aligndistil_cli.fsutil import atomic_path

DEFAULT_CURVE_PATTERNS = ("loss", "reward", "kl", "accuracy", "margin")


def _new_figure(n_axes: int = 1, width: float = 6.0, height: float = 4.5) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return fig, axes


def _save(fig: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # The temporary name has no image suffix, so the format is given explicitly.
        fig.savefig(tmp, format=fmt)


def _error_bars(points: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """[2, N] distances below/above each reward; 0 where the interval is unknown (nan)."""
    below, above = [], []
    for p in points:
        low, high, r = p.get("reward_low"), p.get("reward_high"), float(p["reward"])
        ok = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
        below.append(r - float(low) if ok else 0.0)
        above.append(float(high) - r if ok else 0.0)
    return [below, above]


def plot_frontier(points: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                  title: str = "Reward vs KL to the reference") -> None:
    """Reward against sequence KL(pi || pi_ref), with 95 % CI error bars on the reward.

    Args:
        points: dicts with ``name``, ``kl``, ``reward``, ``reward_low``, ``reward_high`` and an
            optional ``group``; points of one group (e.g. "aligndistil" at several strengths) are
            joined by a line in order of KL, i.e. that method's frontier.
        path: output image (PNG unless the suffix says otherwise).
    """
    if not points:
        raise AlignDistilError("no evaluated models to plot", "evaluate at least one model first")
    fig, (ax,) = _new_figure()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        groups.setdefault(str(p.get("group") or p["name"]), []).append(p)
    for group, members in groups.items():
        members = sorted(members, key=lambda p: float(p["kl"]))
        xs = [float(p["kl"]) for p in members]
        ys = [float(p["reward"]) for p in members]
        ax.errorbar(xs, ys, yerr=_error_bars(members), fmt="o-" if len(members) > 1 else "o",
                    capsize=3, label=group)
        for p, x, y in zip(members, xs, ys):
            ax.annotate(str(p["name"]), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel("reward (mean, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _curve_keys(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                keys: Sequence[str] | None) -> list[str]:
    """Keys to plot, in a stable order: the requested ones that occur, else the default patterns."""
    present: dict[str, None] = {}
    for records in runs.values():
        for rec in records:
            for k, v in rec.items():
                if k != "step" and _numeric(v) is not None:
                    present.setdefault(k, None)
    if keys is not None:
        return [k for k in keys if k in present]
    return [k for k in present if any(pat in k.lower() for pat in DEFAULT_CURVE_PATTERNS)]


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                         path: str | os.PathLike, keys: Sequence[str] | None = None) -> list[str]:
    """One subplot per metric against ``step``, one line per run.

    Args:
        runs: run name -> records of its ``metrics.jsonl`` (dicts; ``step`` is the x axis, the
            record index when absent; non-numeric or non-finite values are skipped).
        keys: metrics to plot (those absent from every run are left out); by default every
            metric whose name contains one of ``DEFAULT_CURVE_PATTERNS``.
    Returns:
        The metric names plotted.
    """
    chosen = _curve_keys(runs, keys)
    if not chosen:
        raise AlignDistilError("none of the requested metrics occur in the training logs",
                               "check the run folders' metrics.jsonl and the metric names")
    fig, axes = _new_figure(len(chosen), width=4.5, height=3.5)
    for ax, key in zip(axes, chosen):
        for name, records in runs.items():
            pts = [(float(rec.get("step", i)), _numeric(rec.get(key)))
                   for i, rec in enumerate(records)]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    return chosen
