"""A scene's variants while the artist picks one: each seed's draft, its progress and its latest preview (plain
Python, no bpy). The panel shows them side by side; picking one finishes it on the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobs import FINAL_STATES, stage_label


@dataclass
class Variant:
    job: str  # the service's id of this seed's job
    seed: int
    state: str = "queued"  # queued → running → finished (its draft is ready) | failed | cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    preview: str | None = None  # name of its latest preview (runtime.show_preview)
    preview_at: float = 0.0
    message: str = ""

    @property
    def pickable(self) -> bool:
        """Its draft runs, waits or is ready: it can be finished."""
        return self.state not in ("failed", "cancelled")

    def label(self) -> str:
        if self.state == "finished":
            return f"Seed {self.seed} · draft ready"
        if self.state in ("failed", "cancelled"):
            return f"Seed {self.seed} · {self.state}"
        if self.state == "running" and self.total:
            return f"Seed {self.seed} · {stage_label(self.stage)} {self.step}/{self.total}"
        return f"Seed {self.seed} · {self.state}"

    def on_progress(self, event: dict[str, Any]) -> None:
        self.state = "running"
        self.stage, self.step, self.total = str(event.get("stage", "")), int(event.get("step", 0)), int(
            event.get("total", 0))

    def on_summary(self, summary: dict[str, Any]) -> None:
        self.state = summary.get("state", self.state)
        if (progress := summary.get("progress")) and self.state == "running":
            self.on_progress(progress)
        if error := summary.get("error"):
            self.message = str(error.get("message", ""))


@dataclass
class VariantGroup:
    """The variants of one submit, in seed order; `picked` is the one being finished."""

    group: str  # the service's id of the group
    variants: list[Variant] = field(default_factory=list)
    picked: str | None = None

    @staticmethod
    def accepted(group: str, variants: list[dict[str, Any]]) -> VariantGroup:
        """From an `accepted` reply's `variants` ([{job, seed}, ...])."""
        return VariantGroup(group, [Variant(str(v["job"]), int(v["seed"])) for v in variants])

    def find(self, job: str | None) -> Variant | None:
        return next((v for v in self.variants if v.job == job), None)

    def on_summary(self, summary: dict[str, Any]) -> None:
        """The group's summary (status or cancel): each variant's state."""
        for entry in summary.get("variants", []):
            if (variant := self.find(entry.get("job"))) is not None:
                variant.on_summary(entry)

    @property
    def running(self) -> bool:
        return any(v.state not in FINAL_STATES for v in self.variants)

    @property
    def ready(self) -> bool:
        """Some draft is ready to be finished."""
        return any(v.state == "finished" for v in self.variants)
