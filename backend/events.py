"""Events the optimisation loop emits; the CLI shows them with tqdm, the service streams them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StageStarted:
    stage: str  # "latent", "rgb_refine", "paint", or an export sub-step "export: NAME" (see export.progress)
    total: int  # steps in this stage


@dataclass
class Progress:
    stage: str
    step: int  # 1-based, within the stage
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    eta_s: float = 0.0  # seconds left in the whole job, estimated
    preview: np.ndarray | None = None  # [H, W, 3] uint8, at most every `preview_every_s`


@dataclass
class Finished:
    glb_path: str
    png_path: str


Event = StageStarted | Progress | Finished
EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default sink: drop every event."""
