"""Score distillation sampling (DreamFusion; in latent space as Latent-NeRF).

∇θ = w(t)·(ε̂(z_t; y, t) − ε)·∂z/∂θ with z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε and w(t) = 1 − ᾱ_t. The U-Net is
never differentiated: the gradient is applied through the surrogate ½‖z − sg(z − g)‖², summed over
elements and averaged over the batch, whose gradient with respect to z is exactly g.
"""

from __future__ import annotations

import torch

from backend.cameras import Cameras
from backend.guidance.base import NoisePrediction, Prompt
from backend.objectives.base import Objective
from backend.transfer import to_device


class SDS(Objective):
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - self.guidance.alphas_cumprod[t]

    def prediction(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Prompt,
                   cameras: Cameras) -> tuple[torch.Tensor, NoisePrediction]:
        """(z_t, the prior's raw parts at z_t): latents z [B, 4, h, w] noised to timesteps t with `noise`."""
        a = self.guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
        return z_t, self.guidance.predict_noise(z_t, t, prompt, cameras)

    def prior_noise(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Prompt,
                    cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_t, ε̂): latents z [B, 4, h, w] noised to timesteps t, and the prior's guided noise estimate."""
        z_t, parts = self.prediction(z, t, noise, prompt, cameras)
        return z_t, parts.guided(self.guidance_scale)

    def gradient(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompt: Prompt,
                 cameras: Cameras) -> torch.Tensor:
        """w(t)·(ε̂ − ε) for latents z [B, 4, h, w], as a detached tensor."""
        _, eps = self.prior_noise(z, t, noise, prompt, cameras)
        grad = self.weight(t).view(-1, 1, 1, 1) * (eps - noise)
        return torch.nan_to_num(grad)

    def loss(self, z: torch.Tensor, images: torch.Tensor | None, t: torch.Tensor, prompt: Prompt,
             cameras: Cameras, generator: torch.Generator) -> torch.Tensor:
        """The surrogate loss for latents z [B, 4, h, w] at timesteps t [B] (on any device)."""
        noise = to_device(torch.randn(z.shape, generator=generator), z)
        grad = self.gradient(z, to_device(t, self.guidance.alphas_cumprod.device), noise, prompt, cameras)
        target = (z - grad).detach()
        return 0.5 * ((z - target) ** 2).sum() / z.shape[0]
