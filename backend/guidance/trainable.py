"""Trainable noise predictors ε_φ(z_t, t, c, y) that start as a prior's own conditional prediction.

VSD (ProlificDreamer) trains such a model on the scene's renders beside the scene. It is conditioned on the
camera c as ProlificDreamer does: the flattened camera-to-world matrix through a small MLP whose output is
added to the U-Net's timestep embedding (its "class" conditioning). Two kinds:

- `ResidualDenoiser` (any prior, used by the analytic ones): the prior's conditional ε̂ (guidance scale 1,
  never differentiated) plus a small U-Net built in code whose output layer starts at zero, the analytic
  counterpart of a LoRA: a frozen base and a trainable correction that starts at nothing.
- `backend.guidance.lora.LoRADenoiser` (Stable Diffusion): a LoRA (peft) of the guidance's own U-Net.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from backend.cameras import Cameras
from backend.guidance.base import Guidance, Prompt

CAMERA_FEATURES = 16  # the flattened 4×4 camera-to-world matrix


def camera_condition(cameras: Cameras, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 16] camera conditioning; rows where `keep` [B] is false are zero (the "no camera" condition)."""
    c = cameras.c2w.reshape(cameras.batch, CAMERA_FEATURES).float()
    return c if keep is None else c * keep.to(c).view(-1, 1)


def camera_embedding(width: int) -> TimestepEmbedding:
    """The camera's MLP into a U-Net's time-embedding width (linear, SiLU, linear)."""
    return TimestepEmbedding(CAMERA_FEATURES, width)


class ResidualDenoiser(nn.Module):
    """ε_φ = ε̂_prior(z_t; y, t, scale 1) + U-Net_φ(z_t, t, c), the U-Net's output layer zero at the start."""

    def __init__(self, guidance: Guidance, width: int = 32) -> None:
        super().__init__()
        self._guidance = [guidance]  # in a list: the prior is not part of this module's state
        self.unet = UNet2DModel(in_channels=4, out_channels=4, block_out_channels=(width, 2 * width),
                                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
        self.unet.class_embedding = camera_embedding(4 * width)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        self.to(guidance.device)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras,
                keep_camera: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            base = self._guidance[0].predict_noise(z_t, t, prompt, cameras, 1.0).float()
        cond = camera_condition(cameras, keep_camera).to(z_t.device)
        residual = self.unet(z_t.float(), t.to(z_t.device), class_labels=cond).sample
        return base + residual.float()
