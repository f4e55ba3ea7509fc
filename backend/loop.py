"""The one optimisation loop every task runs.

A task is a list of stages; each stage knows how to enter itself (switch the scene's mode and build its
optimiser) and how to compute one step's losses. The loop owns everything else: backward and optimiser
steps, progress and preview events with an ETA, the cancel flag, and checkpoints that let a killed job
resume where it stopped.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.errors import Cancelled
from backend.events import EventSink, Progress, StageStarted, ignore
from backend.timing import Timer, untimed

CHECKPOINT_NAME = "checkpoint.pt"
# set in a checkpoint of a variant's draft that its job continues from (see `backend.service.variants`)
DRAFT_KEY = "draft"


@dataclass
class Stage:
    name: str
    iters: int
    enter: Callable[[], torch.optim.Optimizer]  # switch the scene into this stage, return its optimiser
    # (step, total) → losses, "total" is minimised; step and total are the job's progress over all stages
    # (what timestep schedules and ramps follow), or this stage's own with `restart_schedules`
    step: Callable[[int, int], dict[str, torch.Tensor]]
    preview: Callable[[], np.ndarray] | None = None  # a small RGB uint8 image of the current state
    restart_schedules: bool = False  # this stage's schedules start over instead of continuing the job's
    # (step, iters) → factor on every parameter group's rate at this stage step; a function of the step
    # alone, so a resumed job continues the same schedule
    lr_scale: Callable[[int, int], float] | None = None


def final_anneal(fraction: float, floor: float = 0.01) -> Callable[[int, int], float] | None:
    """A rate held until the last `fraction` of a stage, then cosine-annealed to `floor` × itself.

    A constant rate leaves Adam's parameters oscillating about the optimum by about the rate; annealing
    only the end keeps the early steps' pace, which views seen rarely (undersides) need to converge.
    """
    if fraction <= 0:
        return None

    def scale(step: int, iters: int) -> float:
        start = (1 - fraction) * iters
        if step < start:
            return 1.0
        t = (step - start) / max(iters - 1 - start, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return scale


@dataclass
class LoopConfig:
    checkpoint_every: int = 250  # steps; 0 disables checkpoints
    preview_every_s: float = 5.0


class Checkpointer:
    """Saves the scene, optimiser and RNG state atomically to one file in a job folder."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CHECKPOINT_NAME

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)


def schedule_position(stages: list[Stage], index: int, step: int) -> tuple[int, int]:
    """(step, total) that step `step` of stage `index` hands its step function: the job's progress over
    all stages, so a schedule runs once over the whole job, unless the stage restarts its schedules.
    Derived from the stage lengths alone, so a resumed job continues where it stopped."""
    if stages[index].restart_schedules:
        return step, stages[index].iters
    return sum(s.iters for s in stages[:index]) + step, sum(s.iters for s in stages)


def train_step(stage: Stage, optimizer: torch.optim.Optimizer, step: int,
               timer: Timer = untimed, position: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step of `stage`: its losses, their gradient, the optimiser's update.

    `position` is the (step, total) its schedules see (`schedule_position`); by default the stage's own.
    """
    if stage.lr_scale is not None:
        factor = stage.lr_scale(step, stage.iters)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
    optimizer.zero_grad(set_to_none=True)
    parts = stage.step(*(position or (step, stage.iters)))
    with timer("backward"):
        parts["total"].backward()
    with timer("optimiser"):
        optimizer.step()
    return parts


def run_stages(
    stages: list[Stage],
    state: torch.nn.Module,
    generator: torch.Generator,
    config: LoopConfig | None = None,
    on_event: EventSink = ignore,
    cancel: threading.Event | None = None,
    checkpointer: Checkpointer | None = None,
    report_every: int = 1,
    after_s: float = 0.0,
) -> dict[str, float]:
    """Run every stage to its end; returns the last step's losses.

    `after_s` is the estimated time of the work that follows the stages (the export): the ETA includes it.

    Progress (with the losses) is reported every `report_every` steps, at each stage's end and with each
    preview: reading losses back from a GPU waits for it, so a fast step reports less often.
    """
    config = config or LoopConfig()
    start_stage, start_step, saved = 0, 0, None
    if checkpointer is not None and (saved := checkpointer.load()) is not None:
        start_stage, start_step = int(saved["stage"]), int(saved["step"])
        # a variant's draft (a shorter schedule of this job) has no state for the stages it never had (absent, or
        # sized to nothing): those parts keep their fresh values, as at this point of a job run from the start
        draft, scene = bool(saved.get(DRAFT_KEY, False)), saved["scene"]
        if draft:
            own = state.state_dict()
            scene = {k: v for k, v in scene.items() if not (v.numel() == 0 and k in own and own[k].numel())}
        loaded = state.load_state_dict(scene, strict=not draft)
        if loaded.unexpected_keys:
            raise RuntimeError(f"the checkpoint holds state this job does not have: {loaded.unexpected_keys[:5]}")
        generator.set_state(saved["generator"])
    t0, steps_timed, last_preview = time.perf_counter(), 0, -float("inf")
    losses: dict[str, float] = {}
    for index in range(start_stage, len(stages)):
        stage = stages[index]
        optimizer = stage.enter()
        first = start_step if index == start_stage else 0
        if saved is not None and index == start_stage and "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
        on_event(StageStarted(stage.name, stage.iters))
        stage_t0, stage_timed = time.perf_counter(), 0
        later_steps = sum(s.iters for s in stages[index + 1:])
        for step in range(first, stage.iters):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled during {stage.name} at step {step} of {stage.iters}")
            parts = train_step(stage, optimizer, step, position=schedule_position(stages, index, step))
            steps_timed, stage_timed = steps_timed + 1, stage_timed + 1
            now = time.perf_counter()
            # this stage's rest at its own pace (a mesh step can cost ten latent steps), later stages at the job's
            eta_s = ((now - stage_t0) / stage_timed * (stage.iters - step - 1)
                     + (now - t0) / steps_timed * later_steps + after_s)
            preview = None
            if stage.preview is not None and now - last_preview >= config.preview_every_s:
                preview, last_preview = stage.preview(), now
            at_end = step + 1 == stage.iters
            if preview is not None or at_end or (step + 1) % report_every == 0:
                losses = {k: float(v.detach()) for k, v in parts.items()}
                on_event(Progress(stage.name, step + 1, stage.iters, losses,
                                  eta_s=eta_s, preview=preview))
            if checkpointer is not None and config.checkpoint_every and (
                    (step + 1) % config.checkpoint_every == 0 or at_end):
                nxt_stage, nxt_step = (index + 1, 0) if at_end else (index, step + 1)
                saving = {"stage": nxt_stage, "step": nxt_step, "scene": state.state_dict(),
                          "generator": generator.get_state()}
                if not at_end:
                    saving["optimizer"] = optimizer.state_dict()
                checkpointer.save(saving)
    return losses
