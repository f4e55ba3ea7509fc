"""Variational score distillation (ProlificDreamer).

The scene's renders are treated as samples of a distribution that a second noise predictor ε_φ models: a
LoRA of the prior's own U-Net (an analytic prior: a small U-Net trained from zero), conditioned on the
camera c. The scene moves by

    ∇θ = w(t)·(ε̂_pretrain(z_t; y, t) − ε_φ(z_t; y, t, c))·∂z/∂θ,   w(t) = 1 − ᾱ_t,

with ε̂_pretrain the prior under classifier-free guidance (7.5 by default, not SDS's 100), applied through the
same surrogate as SDS. ε_φ learns the renders with the plain diffusion loss at an independent timestep,

    L_φ = ‖ε_φ(√ᾱ_τ·sg(z) + √(1−ᾱ_τ)·ε'; y, τ, c) − ε'‖²  (mean over elements),

with the camera dropped (zeroed) on a fraction of its steps, as ProlificDreamer trains it. L_φ reaches only
φ and the surrogate only the scene: both are summed into the step's loss and one optimiser steps both.
ε_φ sees the plain prompt, never the view-dependent one (ProlificDreamer and threestudio): the camera
already tells it the view, and the view suffixes are the pretrained model's crutch, not the renders'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from backend.cameras import Cameras
from backend.errors import ConfigError
from backend.guidance.base import Guidance, Prompt
from backend.guidance.trainable import SmallDenoiser
from backend.objectives.sds import SDS
from backend.schedules import TimestepConfig, uniform_timesteps
from backend.transfer import to_device

MAX_RANK = 256
HINT = "ProlificDreamer's defaults: lora_rank 4, lora_lr 1e-4, lora timesteps 0 … 1, camera_dropout 0.1"


@dataclass
class VSDConfig:
    lora_rank: int = 4  # LoRA rank of the U-Net's attention projections (Stable Diffusion priors)
    lora_lr: float = 1e-4  # learning rate of ε_φ (its own optimiser group)
    # the timesteps ε_φ trains at, as fractions of the prior's training timesteps (uniform, per render)
    lora_timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(t_min=0.0, t_max=1.0))
    camera_dropout: float = 0.1  # fraction of ε_φ's training steps without the camera

    def validate(self) -> None:
        rank = self.lora_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
            raise ConfigError(f"objective.vsd.lora_rank must be an integer in [1, {MAX_RANK}], got {self.lora_rank!r}",
                              HINT)
        if not (isinstance(self.lora_lr, (int, float)) and math.isfinite(self.lora_lr) and 0 < self.lora_lr <= 1):
            raise ConfigError(f"objective.vsd.lora_lr must be in (0, 1], got {self.lora_lr!r}", HINT)
        if self.lora_timesteps.schedule != "uniform":
            raise ConfigError("objective.vsd.lora_timesteps.schedule must be 'uniform'",
                              "ε_φ learns every noise level at once")
        try:
            self.lora_timesteps.validate()
        except ConfigError as err:
            raise ConfigError(f"objective.vsd.lora_timesteps: {err.message}", HINT) from err
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ConfigError(f"objective.vsd.camera_dropout must be in [0, 1], got {self.camera_dropout}", HINT)


def plain(prompt: Prompt) -> Prompt:
    """The prompt without its view suffixes (and so without Perp-Neg's view negatives): what ε_φ is told."""
    return replace(prompt, view_dependent=False, perp_neg=False)


class VSD(SDS):
    settings_type = VSDConfig
    settings: VSDConfig
    # ProlificDreamer: the LoRA's model of the renders replaces SDS's huge guidance scale
    defaults = {
        "objective": {"guidance_scale": 7.5,
                      "vsd": {"lora_rank": 4, "lora_lr": 1e-4, "lora_timesteps": {"t_min": 0.0, "t_max": 1.0}}},
        # t_max drops to 0.5 once the shape has formed (threestudio's prolificdreamer: at step 5,000 of 25,000,
        # a fifth of the run; a fraction here, so the short presets get the drop too)
        "timesteps": {"schedule": "uniform", "t_min": 0.02, "t_max": 0.98, "late_t_max": 0.5, "late_from": 0.2},
    }

    def __init__(self, guidance: Guidance, guidance_scale: float, settings: VSDConfig | None = None) -> None:
        super().__init__(guidance, guidance_scale, settings)
        adapted = guidance.trainable_denoiser(self.settings.lora_rank)
        self.trainable = adapted if adapted is not None else SmallDenoiser(guidance.device)

    def param_groups(self) -> list[dict]:
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        return [{"params": params, "lr": self.settings.lora_lr}]

    def gradient(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Prompt,
                 cameras: Cameras) -> torch.Tensor:
        """w(t)·(ε̂_pretrain − ε_φ) for latents z [B, 4, h, w], as a detached tensor."""
        z_t, eps = self.prior_noise(z, t, noise, prompt, cameras)
        with torch.no_grad():
            eps_phi = self.trainable(z_t, t, plain(prompt), cameras)
        grad = self.weight(t).view(-1, 1, 1, 1) * (eps.float() - eps_phi.float())
        return torch.nan_to_num(grad)

    def model_loss(self, z: torch.Tensor, prompt: Prompt, cameras: Cameras, generator: torch.Generator
                   ) -> torch.Tensor:
        """ε_φ's diffusion loss on the renders z (detached), at its own timesteps and noise."""
        z = z.detach().float()
        batch, device = z.shape[0], self.guidance.alphas_cumprod.device
        t = to_device(uniform_timesteps(self.settings.lora_timesteps, 0, 1, batch, self.guidance.num_train_timesteps,
                                        generator), device)
        noise = to_device(torch.randn(z.shape, generator=generator), z)
        keep = to_device(torch.rand(batch, generator=generator) >= self.settings.camera_dropout, z.device)
        a = self.guidance.alphas_cumprod[t].view(-1, 1, 1, 1).to(z)
        eps = self.trainable(a.sqrt() * z + (1 - a).sqrt() * noise, t, plain(prompt), cameras, keep)
        return ((eps.float() - noise) ** 2).mean()

    def losses(self, z: torch.Tensor, images: torch.Tensor | None, t: torch.Tensor, prompt: Prompt,
               cameras: Cameras, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"guidance": self.loss(z, images, t, prompt, cameras, generator),
                "lora": self.model_loss(z, prompt, cameras, generator)}
