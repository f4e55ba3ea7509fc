"""One score-distillation step, shared by every task: sample cameras → render → guidance → loss.

A task supplies how its scene renders a batch of cameras and which regularisers apply; everything about
the prior (encoding, timesteps, the objective) lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from backend.cameras import CameraConfig, Cameras, CameraSampler
from backend.errors import ConfigError
from backend.guidance.base import Guidance, Prompt
from backend.latent import latent_to_rgb
from backend.loop import LoopConfig
from backend.objectives import ObjectiveConfig
from backend.schedules import TimestepConfig, sample_timesteps

MAX_PROMPT_CHARS = 1000


def check_prompt(prompt: str) -> None:
    if not prompt or not prompt.strip():
        raise ConfigError("the prompt is empty", "describe the object, e.g. --prompt 'a red toadstool'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(f"the prompt is {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}")


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
    camera: CameraConfig = field(default_factory=CameraConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def validate(self) -> None:
        check_prompt(self.prompt)
        check_render_size("resolution", self.resolution)
        for part in (self.camera, self.timesteps, self.objective):
            part.validate()


@dataclass
class SceneRender:
    image: torch.Tensor  # [B, C, H, W]: latents (C = 4) or RGB in [0, 1] (C = 3)
    latent: bool
    extras: Any = None  # what regularisers need (a VolumeRender, coverage, ...)


# (render, step, total) → loss; step and total are the job's progress (see `backend.loop.Stage.step`)
Regulariser = Callable[[SceneRender, int, int], torch.Tensor]


@dataclass
class DistillStep:
    render: Callable[[Cameras], SceneRender]
    guidance: Guidance
    objective: Any  # has .loss(z, images, t, prompt, cameras, generator); t on the host, where it is drawn
    timesteps: TimestepConfig
    cameras: CameraSampler
    prompt: Prompt
    generator: torch.Generator
    batch: int = 1
    regularisers: dict[str, tuple[float, Regulariser]] = field(default_factory=dict)

    def __call__(self, step: int, total: int) -> dict[str, torch.Tensor]:
        cams = self.cameras.sample(self.batch)
        out = self.render(cams)
        images = None if out.latent else out.image
        z = out.image if out.latent else self.guidance.encode(out.image)
        t = sample_timesteps(self.timesteps, step, total, self.batch, self.guidance.num_train_timesteps,
                             self.generator)
        losses = {"guidance": self.objective.loss(z, images, t, self.prompt, cams, self.generator)}
        total_loss = losses["guidance"]
        for name, (weight, fn) in self.regularisers.items():
            if weight > 0:
                losses[name] = fn(out, step, total)
                total_loss = total_loss + weight * losses[name]
        losses["total"] = total_loss
        return losses


def to_preview(image: torch.Tensor, latent: bool) -> np.ndarray:
    """First image of a batch as uint8 RGB [H, W, 3] (latents through the linear approximation)."""
    rgb = latent_to_rgb(image[:1]) if latent else image[:1]
    return (rgb[0].clamp(0, 1).permute(1, 2, 0).detach().cpu().numpy() * 255).round().astype(np.uint8)
