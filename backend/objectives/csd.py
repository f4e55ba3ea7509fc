"""Classifier Score Distillation (Yu et al., "Text-to-3D with Classifier Score Distillation", ICLR 2024).

SDS's gradient under classifier-free guidance at scale s is w(t)·((ε_u − ε) + s·(ε_c − ε_u)). CSD keeps only the
second part, the classifier score (the direction in which the prompt's condition raises the implicit
classifier's log-likelihood), and drops the generative term ε_u − ε:

    ∇θ = s·w(t)·(ε̂(z_t; y, t) − ε̂(z_t; t))·∂z/∂θ.

The unconditional branch is the negative prompt's prediction, as in diffusers' pipelines, so a negative prompt
turns the classifier into "the prompt rather than the negative" (the paper's negative-prompt variant); with
Perp-Neg, the direction is Perp-Neg's. Applied through SDS's surrogate ½‖z − sg(z − g)‖².

The scale s is the job's guidance scale, so at Latent-NeRF's 100 the step's magnitude (and so its balance with
the regularisers) is SDS's. w(t) is SDS's 1 − ᾱ_t by default; "uniform" (w = 1) is the weighting of the
authors' released code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.cameras import Cameras
from backend.errors import ConfigError
from backend.guidance.base import Guidance, Prompt
from backend.objectives.sds import SDS

WEIGHTINGS = ("sds", "uniform")


@dataclass
class CSDConfig:
    weighting: str = "sds"  # w(t): "sds" (1 − ᾱ_t) or "uniform" (1, the authors' code)

    def validate(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"objective.csd.weighting must be one of {', '.join(WEIGHTINGS)}, "
                              f"got {self.weighting!r}")


class CSD(SDS):
    settings_type = CSDConfig
    settings: CSDConfig

    def __init__(self, guidance: Guidance, guidance_scale: float, settings: CSDConfig | None = None) -> None:
        super().__init__(guidance, guidance_scale, settings)
        if not guidance.prompt_matters:
            raise ConfigError(f"CSD distils how the prompt changes the prior's prediction, and "
                              f"{guidance.describe()} predicts the same whatever the prompt",
                              "use a Stable Diffusion model or a mixture: prior, or another method")

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        w = super().weight(t)
        return torch.ones_like(w) if self.settings.weighting == "uniform" else w

    def gradient(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Prompt,
                 cameras: Cameras) -> torch.Tensor:
        """s·w(t)·(ε_c − ε_u) for latents z [B, 4, h, w], as a detached tensor."""
        _, parts = self.prediction(z, t, noise, prompt, cameras)
        score = parts.direction()
        grad = self.guidance_scale * self.weight(t).view(-1, 1, 1, 1) * score.to(z)
        return torch.nan_to_num(grad)
