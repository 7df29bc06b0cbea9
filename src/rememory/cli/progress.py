"""Progress bars on stderr (stdout carries only data): one tqdm bar per stage of a long job."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

BYTES: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}


class StageBars:
    """Call ``update(stage, done, total)`` from a job's progress events; a new stage starts a new bar.

    ``labels`` renames stages for display; ``units`` gives a stage's tqdm unit options (default ``unit``).
    """

    def __init__(self, *, labels: dict[str, str] | None = None, units: dict[str, dict[str, Any]] | None = None,
                 unit: str = "it") -> None:  # fmt: skip
        self.labels = labels or {}
        self.units = units or {}
        self.unit = unit
        self.bar: tqdm | None = None
        self.stage: str | None = None

    def on(self, event: Any) -> None:
        """A progress callback for events with ``done`` and ``total`` and a ``stage`` (or ``phase``)."""
        self.update(getattr(event, "stage", None) or event.phase, event.done, event.total)

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=self.labels.get(stage, stage), file=sys.stderr, dynamic_ncols=True,
                            **self.units.get(stage, {"unit": self.unit}))  # fmt: skip
        assert self.bar is not None
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
