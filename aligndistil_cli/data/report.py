"""Validation reasons, the per-reason report, and the drop/raise policy.

Every row goes through validation before any model is loaded (reliability.md B.5). A reason
either *drops* the row (the example would crash training or carry no gradient) or is a *note*:
the row is kept but was changed (prompt cut from the left, response cut from the right, prompt and
response tokenized separately) and the user should know how often that happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

from rich.table import Table

from aligndistil_cli.errors import AlignDistilError

logger = logging.getLogger("aligndistil")

MAX_EXAMPLE_IDS = 5
ON_INVALID_CHOICES = ("error", "skip", "drop")  # "drop" is an alias of "skip"


class Reason(str, Enum):
    """Why a row was dropped or changed. The value is what the report prints."""

    def __str__(self) -> str:  # StrEnum behaviour, which Python 3.10 lacks
        return self.value

    MALFORMED = "malformed row or message list"
    MISSING_FIELD = "missing field"
    NOT_STRING = "non-string content"
    EMPTY_PROMPT = "empty prompt"
    EMPTY_RESPONSE = "empty response"
    IDENTICAL = "chosen identical to rejected"
    IDENTICAL_AFTER_TRUNCATION = "identical after truncation"
    NO_ROOM = "prompt fills max_length (no room for the response)"
    # Notes: the row is kept.
    PROMPT_TOO_LONG = "prompt longer than the limit"
    RESPONSE_TRUNCATED = "response truncated"
    NOT_A_PREFIX = "templated prompt not a token prefix"
    DUPLICATE = "duplicate example"


NOTES = frozenset({Reason.PROMPT_TOO_LONG, Reason.RESPONSE_TRUNCATED, Reason.NOT_A_PREFIX,
                   Reason.DUPLICATE})

ACTIONS = {
    Reason.PROMPT_TOO_LONG: "kept, prompt cut from the left",
    Reason.RESPONSE_TRUNCATED: "kept, response cut from the right (no EOS)",
    Reason.NOT_A_PREFIX: "kept, prompt and response tokenized separately",
    Reason.DUPLICATE: "kept",
}


class InvalidRow(Exception):
    """Raised inside normalisation/tokenization to drop one row; never escapes this package."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


@dataclass
class ReasonCount:
    """How many rows hit one reason, and the first few of their row ids."""

    count: int = 0
    row_ids: list[int] = field(default_factory=list)


@dataclass
class ValidationReport:
    """Per-reason counts over one data file.

    Attributes:
        n_rows: rows read.
        n_kept: rows that became examples.
        reasons: reason value -> count and up to ``MAX_EXAMPLE_IDS`` row ids.
    """

    n_rows: int = 0
    n_kept: int = 0
    reasons: dict[str, ReasonCount] = field(default_factory=dict)

    def add(self, reason: Reason, row_id: int) -> None:
        entry = self.reasons.setdefault(str(reason), ReasonCount())
        entry.count += 1
        if len(entry.row_ids) < MAX_EXAMPLE_IDS:
            entry.row_ids.append(row_id)

    @property
    def n_dropped(self) -> int:
        return self.n_rows - self.n_kept

    @property
    def dropped(self) -> dict[str, ReasonCount]:
        return {k: v for k, v in self.reasons.items() if Reason(k) not in NOTES}

    @property
    def notes(self) -> dict[str, ReasonCount]:
        return {k: v for k, v in self.reasons.items() if Reason(k) in NOTES}

    @property
    def ok(self) -> bool:
        """True when no row was dropped (notes do not count)."""
        return not self.dropped

    def summary(self, which: str = "dropped") -> str:
        """One line, e.g. ``empty response: 2 (rows 1, 4); missing field: 1 (row 0)``."""
        items = self.dropped if which == "dropped" else self.notes
        parts = []
        for reason, entry in items.items():
            ids = ", ".join(map(str, entry.row_ids)) + (", ..." if entry.count > len(entry.row_ids)
                                                        else "")
            label = "row" if entry.count == 1 else "rows"
            parts.append(f"{reason}: {entry.count} ({label} {ids})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready form (for ``--format json`` and the report file)."""
        return {
            "n_rows": self.n_rows, "n_kept": self.n_kept, "n_dropped": self.n_dropped,
            "reasons": {k: {"count": v.count, "row_ids": list(v.row_ids),
                            "action": _action(k)} for k, v in self.reasons.items()},
        }


def _action(reason: str) -> str:
    return ACTIONS.get(Reason(reason), "dropped")


def render_report(report: ValidationReport) -> Table:
    """A rich table: one line per reason with its count, what was done, and example row ids."""
    table = Table(title=f"Data validation: {report.n_kept} of {report.n_rows} rows kept")
    table.add_column("Reason")
    table.add_column("Rows", justify="right")
    table.add_column("Action")
    table.add_column(f"Row ids (first {MAX_EXAMPLE_IDS})")
    for reason, entry in sorted(report.reasons.items(), key=lambda kv: (Reason(kv[0]) in NOTES,
                                                                         -kv[1].count)):
        table.add_row(reason, str(entry.count), _action(reason),
                      ", ".join(map(str, entry.row_ids)))
    if not report.reasons:
        table.add_row("(none)", "0", "all rows valid", "")
    return table


def check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ON_INVALID_CHOICES:
        raise AlignDistilError(f"unknown on_invalid policy {on_invalid!r}",
                               "use 'error' (stop on any invalid row) or 'skip' (drop them)")


def apply_policy(report: ValidationReport, on_invalid: str, what: str,
                 max_drop_fraction: float | None = None) -> None:
    """Raise or warn about dropped rows once every row has been checked.

    ``error`` raises on any dropped row; ``skip`` logs a warning, but still raises when no row is
    left or more than ``max_drop_fraction`` of the rows were dropped (a wrong key or layout
    usually shows up as "everything invalid", which must not silently train on nothing).
    """
    if report.n_rows and report.ok:
        return
    summary = report.summary()
    if report.n_kept == 0:
        err = AlignDistilError(f"no valid rows in {what}: {summary or 'the data is empty'}",
                               "check the file and the --prompt-key/--chosen-key/--rejected-key "
                               "options; `aligndistil validate` shows a per-reason table")
    elif on_invalid == "error":
        err = AlignDistilError(f"{report.n_dropped} of {report.n_rows} rows of {what} are invalid: "
                               f"{summary}", "fix or remove these rows, or pass --on-invalid skip "
                               "to drop them")
    elif max_drop_fraction is not None and report.n_dropped > max_drop_fraction * report.n_rows:
        err = AlignDistilError(f"{report.n_dropped} of {report.n_rows} rows of {what} are invalid, "
                               f"more than the allowed {max_drop_fraction:.0%}: {summary}",
                               "fix the data or raise the maximum drop fraction")
    else:
        logger.warning("dropped %d of %d rows of %s: %s", report.n_dropped, report.n_rows, what,
                       summary)
        return
    err.report = report  # type: ignore[attr-defined]  # lets `validate` still render the table
    raise err
