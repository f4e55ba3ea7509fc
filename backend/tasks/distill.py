"""What every score-distillation task shares: its config, one step (sample cameras → render → guidance →
loss), the job's set-up, run and entry.

A task supplies its scenes, the stages that render them and which regularisers apply; everything about
the prior (encoding, timesteps, the objective) and the job's plumbing lives here once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.cameras import CameraConfig, Cameras, CameraSampler
from backend.catalog import MAX_PROMPT_CHARS, MAX_SEED
from backend.errors import ConfigError, InputError
from backend.events import EventSink, ignore
from backend.guidance.base import Guidance, Prompt
from backend.loop import Checkpointer, LoopConfig, Stage, run_stages
from backend.mesh import Frame
from backend.objectives import Objective, checkpointed
from backend.objectives.config import ObjectiveConfig
from backend.reference import ImageConfig
from backend.scene.base import Regulariser, SceneRender, to_preview  # noqa: F401 - the tasks' shared names
from backend.schedules import TimestepConfig, sample_timesteps
from backend.shading import LightConfig, sample_light, sample_mode
from backend.speed import SpeedConfig

PERP_NEG = ("auto", "on", "off")


def check_prompt(prompt: str, negative: str = "") -> None:
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty", "describe the object, e.g. --prompt 'a red toadstool'")
    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"the {name} is {len(text)} characters, over the limit of {MAX_PROMPT_CHARS}",
                              f"shorten the {name}")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, 2^63 - 1], got {seed}", "pick a smaller non-negative seed")


def check_render_size(name: str, value: int) -> None:
    if not 8 <= value <= 1024 or value % 8:
        raise ConfigError(f"{name} must be a multiple of 8 in [8, 1024], got {value}")


@dataclass
class DistillConfig:
    """What every score-distillation task shares: prompt, seed, training render size, cameras, the prior."""

    prompt: str = ""
    negative: str = ""
    seed: int = 0
    resolution: int = 64  # training render size (latent pixels)
    view_dependent_prompt: bool = True
    # Perp-Neg for the view prompts: "auto" follows the prior (on for Stable Diffusion, off for analytic
    # priors), "on" or "off"
    perp_neg: str = "auto"
    # where the asset's front faces in the scene, degrees counter-clockwise about +Z from −Y (Blender's front
    # view; 90 is +X): "front/side/back view" prompts follow it, and so does a sketch turned by the artist
    front_yaw: float = 0.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # a reference image's view and weights, when given

    def validate(self) -> None:
        check_prompt(self.prompt, self.negative)
        check_seed(self.seed)
        check_render_size("resolution", self.resolution)
        if self.perp_neg not in PERP_NEG:
            raise ConfigError(f"perp_neg must be one of {', '.join(PERP_NEG)}, got {self.perp_neg!r}")
        if self.perp_neg == "on" and not self.view_dependent_prompt:
            raise ConfigError("Perp-Neg needs view-dependent prompts: its negatives are the other views",
                              "drop --perp-neg or turn view_dependent_prompt back on")
        if not (isinstance(self.front_yaw, (int, float)) and math.isfinite(self.front_yaw)):
            raise ConfigError(f"front_yaw must be a finite angle in degrees, got {self.front_yaw!r}",
                              "0 faces −Y (Blender's front view), 90 faces +X")
        for part in (self.camera, self.timesteps, self.objective, self.image):
            part.validate()


# a reference image's view: (the stage's render, step, total) → {name: (weight, loss)}, empty on steps it skips
ReferenceLosses = Callable[[Callable[[Cameras], SceneRender], int, int], dict[str, tuple[float, torch.Tensor]]]


@dataclass
class DistillStep:
    render: Callable[[Cameras], SceneRender]
    guidance: Guidance
    objective: Objective  # t is handed over on the host, where it is drawn
    timesteps: TimestepConfig
    cameras: CameraSampler
    prompt: Prompt
    generator: torch.Generator
    batch: int = 1
    regularisers: dict[str, tuple[float, Regulariser]] = field(default_factory=dict)
    lighting: LightConfig | None = None  # shaded stages: a point light and a render mode drawn per step
    t_range: tuple[float, float] | None = None  # a stage's own limits on t (fractions); None: the schedule's
    reference: ReferenceLosses | None = None  # the reference image's view, fitted beside the prior's views

    def __call__(self, step: int, total: int) -> dict[str, torch.Tensor]:
        cams = self.cameras.sample(self.batch)
        if self.lighting is not None:
            # on the camera batch, so a prior that renders its own answer shades it the same way
            cams = replace(cams, light=sample_light(cams.position, self.lighting, self.generator),
                           shading=sample_mode(self.lighting, self.generator))
        out = self.render(cams)
        images = None if out.latent else out.image
        z = out.image if out.latent else self.guidance.encode(out.image)
        t = sample_timesteps(self.timesteps, step, total, self.batch, self.guidance.num_train_timesteps,
                             self.generator, self.t_range)
        losses = self.objective.losses(z, images, t, self.prompt, cams, self.generator)
        total_loss = sum(losses.values())
        for name, (weight, fn) in self.regularisers.items():
            if weight > 0:
                losses[name] = fn(out, step, total)
                total_loss = total_loss + weight * losses[name]
        for name, (weight, loss) in (self.reference(self.render, step, total) if self.reference else {}).items():
            losses[name] = loss
            total_loss = total_loss + weight * loss
        losses["total"] = total_loss
        return losses


def distill_stage(name: str, iters: int, step: DistillStep, enter: Callable[[], list[dict]], speed: SpeedConfig,
                  preview: Callable[[], np.ndarray] | None = None, restart_schedules: bool = False,
                  lr_scale: Callable[[int, int], float] | None = None, **adam: Any) -> Stage:
    """A stage of `step`s whose optimiser trains `enter()`'s parameter groups (`enter` switches the scenes into
    the stage and returns their groups) and the objective's own (VSD's LoRA), with Adam's `adam` settings:
    the one place a stage's optimiser is built, so no stage can leave the objective's parameters out."""

    def optimiser() -> torch.optim.Optimizer:
        return speed.adam(enter() + step.objective.param_groups(), **adam)

    return Stage(name, iters, optimiser, step, preview, restart_schedules=restart_schedules, lr_scale=lr_scale)


@dataclass
class DistillJob:
    """What every task's job shares: its stages, the state its checkpoints hold, and how it runs and exports."""

    config: DistillConfig
    stages: list[Stage]
    generator: torch.Generator
    speed: SpeedConfig  # resolved for the guidance's device
    objective: Objective  # the stages' objective: its own trainable state is checkpointed with the scene's

    def state(self) -> torch.nn.Module:
        """The scene's parameters a checkpoint saves and a resumed job loads."""
        raise NotImplementedError

    def checkpointed(self) -> torch.nn.Module:
        """Everything a checkpoint holds: the scene's state and the objective's own, if it trains one."""
        return checkpointed(self.state(), self.objective)

    def export_estimate_s(self) -> float:
        """Seconds the export after the stages is expected to take: the ETA covers it."""
        return 0.0

    def export(self, out_path: Path, on_event: EventSink | None = None) -> Any:
        """Write the asset, reporting each export sub-step to `on_event` as a stage `export: NAME`."""
        raise NotImplementedError

    def run(self, on_event: EventSink = ignore, cancel: threading.Event | None = None,
            job_dir: str | Path | None = None) -> None:
        checkpointer = Checkpointer(Path(job_dir)) if job_dir is not None else None
        run_stages(self.stages, self.checkpointed(), self.generator, self.config.loop, on_event, cancel, checkpointer,
                   report_every=self.speed.report_every, after_s=self.export_estimate_s())


def perp_neg_on(config: DistillConfig, guidance: Guidance) -> bool:
    """Whether the job's view prompts use Perp-Neg: as asked, or by the prior's default for "auto"."""
    wanted = config.perp_neg == "on" or (config.perp_neg == "auto" and guidance.perp_neg_by_default)
    return wanted and config.view_dependent_prompt


def set_up(config: DistillConfig, guidance: Guidance, speed: SpeedConfig, frame: Frame
           ) -> tuple[torch.Generator, Prompt]:
    """Seed the job, tell the prior where the asset lands and let it prepare for the prompt."""
    guidance.accelerate(speed)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    guidance.set_frame(frame)
    prompt = Prompt(config.prompt, config.negative, config.view_dependent_prompt,
                    perp_neg=perp_neg_on(config, guidance))
    guidance.prepare(prompt)
    return generator, prompt


def glb_output(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".glb":
        raise InputError(f"the output {out_path.name!r} must end in .glb")
    return out_path


def run_job(job: DistillJob, out_path: Path, on_event: EventSink, cancel: threading.Event | None,
            job_dir: str | Path | None) -> Any:
    """Run every stage (resuming from `job_dir`'s checkpoint), then export to `out_path`."""
    job.run(on_event, cancel, job_dir)
    return job.export(out_path, on_event=on_event)
