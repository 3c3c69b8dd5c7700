"""Plain-text tables and the phase's output files (``--out``): ``PHASE.json`` (every figure) and
``PHASE-tables.txt`` (the tables as printed), both rewritten after every table so that a run cut
short still leaves what it measured."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Sink", "Table", "fmt"]


def fmt(value: float | None, digits: int = 1, comma: bool = False) -> str:
    """A number for a cell, ``-`` for None or NaN."""
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}" if comma else f"{value:.{digits}f}"


@dataclasses.dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]

        def line(cells: Sequence[str]) -> str:
            padded = [
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=False))
            ]
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        out = [f"=== {self.title} ===", line(self.headers), rule, *(line(r) for r in self.rows)]
        if self.note:
            out.append(self.note)
        return "\n".join(out)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


class Sink:
    """Prints tables and keeps ``PHASE.json`` / ``PHASE-tables.txt`` under ``out`` current."""

    def __init__(self, out: Path, phase: str):
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"{phase}.json"
        self.tables_path = out / f"{phase}-tables.txt"
        self.doc: dict[str, Any] = {"phase": phase}
        self._text: list[str] = []

    def say(self, text: str) -> None:
        """A line that belongs with the tables (printed, and kept in the tables file)."""
        print(text, flush=True)
        self._text.append(text)
        self.save()

    def table(self, table: Table) -> None:
        self.say("\n" + table.render())

    def record(self, key: str, value: Any) -> None:
        self.doc[key] = _plain(value)
        self.save()

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.doc, indent=2) + "\n")
        self.tables_path.write_text("\n".join(self._text) + "\n")
