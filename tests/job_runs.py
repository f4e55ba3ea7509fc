"""Running whole jobs in tests: training events, a job cut off and resumed, a tiny SD paint of a ball."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from backend.compose import method_overrides
from backend.config import merge
from backend.errors import Cancelled
from backend.guidance.base import Guidance
from backend.mesh import Mesh
from backend.tasks.generate import GenerateConfig, generate
from backend.tasks.paint import PaintConfig, PaintResult, paint


def training(events: list) -> list:
    """The progress events of training steps (export sub-steps report no losses)."""
    return [e for e in events if hasattr(e, "losses") and not e.stage.startswith("export")]


def generate_losses(config: GenerateConfig, guidance: Guidance, job_dir: Path, pick: Callable[[dict], Any],
                    cancel_at: int | None = None) -> list:
    """`pick(losses)` of every training step of a generate job in `job_dir`, cancelled after step `cancel_at`
    (and resumed from the folder's checkpoint when it holds one)."""
    cancel, out = threading.Event(), []

    def sink(e: Any) -> None:
        if training([e]):
            out.append(pick(e.losses))
            if e.step == cancel_at:
                cancel.set()
    with contextlib.suppress(Cancelled):
        generate(config, guidance, job_dir / "x.glb", on_event=sink, cancel=cancel, job_dir=job_dir)
    return out


def paint_a_ball(guidance: Guidance, method: str, iters: int, out: Path) -> tuple[PaintResult, list]:
    """`method`'s paint of a unit icosphere at tiny sizes with a 2-step RGB stage: the result and its training
    events."""
    config = merge(merge(PaintConfig(prompt="a ball"), method_overrides(method, PaintConfig)),
                   {"resolution": 16, "iters": iters, "texture_size": 64, "finetune_iters": 2,
                    "finetune_resolution": 32, "loop": {"checkpoint_every": 0}})
    ball = trimesh.creation.icosphere(1)
    seen: list = []
    result = paint(config, guidance, Mesh(np.asarray(ball.vertices, np.float32), np.asarray(ball.faces)), out,
                   on_event=seen.append)
    return result, training(seen)
