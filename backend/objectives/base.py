"""What every objective offers a task: its losses for one step and, when it trains a model of its own, that
model's parameters.

An objective is built from the guidance, the job's guidance scale and its own settings table (`settings_type`,
the `objective.<method>` table of a config; None when it has none), and says which config defaults come with
it as a method (`defaults`, nested overrides such as HiFA's timestep schedule; see `backend.compose`).

An objective that owns parameters (VSD's LoRA) exposes them as one `nn.Module` (`trainable`): the task puts
`param_groups()` into each stage's optimiser and the module into the job's checkpointed state, so a resumed
job restores it exactly. The loop itself never learns that the objective has parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from backend.cameras import Cameras
from backend.guidance.base import Guidance, Prompt


class Objective:
    """Defaults for objectives that train nothing of their own (SDS, HiFA)."""

    #: the dataclass of this objective's own settings table, or None
    settings_type: ClassVar[type | None] = None
    #: config overrides that come with this objective when a user picks it as a method
    defaults: ClassVar[dict[str, Any]] = {}
    #: the objective's own trainable state (saved in checkpoints), or None
    trainable: nn.Module | None = None
    #: whether the loss sums over the latent's elements (SDS, VSD: it grows with the render's pixel count) or is
    #: normalised to Stable Diffusion's native size (HiFA's BGT+: the same at any render size)
    sums_over_pixels: bool = True

    def __init__(self, guidance: Guidance, guidance_scale: float, settings: Any = None) -> None:
        self.guidance = guidance
        self.guidance_scale = float(guidance_scale)
        if self.settings_type is not None:
            settings = settings if settings is not None else self.settings_type()
            settings.validate()
        self.settings = settings

    def param_groups(self) -> list[dict]:
        """Optimiser groups (each with its own lr) for `trainable`'s parameters; none by default."""
        return []

    def loss(self, z: torch.Tensor, images: torch.Tensor | None, t: torch.Tensor, prompt: Prompt,
             cameras: Cameras, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, z: torch.Tensor, images: torch.Tensor | None, t: torch.Tensor, prompt: Prompt,
               cameras: Cameras, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Named loss terms, all minimised together: "guidance" moves the scene; an objective that trains a
        model of its own adds that model's loss under its own name."""
        return {"guidance": self.loss(z, images, t, prompt, cameras, generator)}


class WithObjective(nn.Module):
    """A job's checkpointed state: the task's own state plus the objective's trainable module."""

    def __init__(self, scene: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.scene = scene
        self.objective = objective


def checkpointed(scene: nn.Module, objective: Objective) -> nn.Module:
    """What a job's checkpoint holds: the scene state alone when the objective trains nothing (so such
    checkpoints keep their layout), else both."""
    return scene if objective.trainable is None else WithObjective(scene, objective.trainable)
