"""Lines a reader skipped, counted by reason, with the first line of each: what every "skipped" warning says."""

from __future__ import annotations

from collections import Counter


class Skipped(Counter):
    """A Counter of reasons that also keeps the first line of each (``first``). ``str()``:
    ``{'no_id': 3, 'not_json': 1} (first at line 5 (no_id), 9 (not_json))``."""

    def __init__(self):
        super().__init__()
        self.first: dict[str, int] = {}

    def skip(self, reason: str, line: int) -> None:
        self[reason] += 1
        self.first.setdefault(reason, line)

    def where(self) -> str:
        """``5 (no_id), 9 (not_json)``: the first line of each reason."""
        return ", ".join(f"{self.first[r]} ({r})" for r in self if r in self.first)

    def __str__(self) -> str:
        where = self.where()
        return f"{dict(self)}" + (f" (first at line {where})" if where else "")
