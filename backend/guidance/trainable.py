"""Trainable noise predictors ε_φ(z_t, t, c, y) of the scene's own renders (VSD's second model).

ε_φ is conditioned on the camera c as ProlificDreamer does: the flattened camera-to-world matrix through a
small MLP whose output is added to the U-Net's timestep embedding (its "class" conditioning). Two kinds:

- `backend.guidance.lora.LoRADenoiser` (Stable Diffusion): a LoRA (peft) of the guidance's own U-Net, which
  starts as the U-Net itself;
- `SmallDenoiser` (any other prior, the analytic ones): a small U-Net built in code whose output layer starts
  at zero. An analytic prior has no network to adapt, and a model that starts at ε_φ = 0 makes VSD's first
  steps SDS without its zero-mean noise term, where starting from the prior's own prediction would leave
  only the guidance term s − 1 times (ε̂_c − ε̂_u) until ε_φ has learnt the renders, which over-saturates.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from backend.cameras import Cameras
from backend.guidance.base import Prompt

CAMERA_FEATURES = 16  # the flattened 4×4 camera-to-world matrix


def camera_condition(cameras: Cameras, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 16] camera conditioning; rows where `keep` [B] is false are zero (the "no camera" condition)."""
    c = cameras.c2w.reshape(cameras.batch, CAMERA_FEATURES).float()
    return c if keep is None else c * keep.to(c).view(-1, 1)


def camera_embedding(width: int) -> TimestepEmbedding:
    """The camera's MLP into a U-Net's time-embedding width (linear, SiLU, linear)."""
    return TimestepEmbedding(CAMERA_FEATURES, width)


class SmallDenoiser(nn.Module):
    """ε_φ = U-Net_φ(z_t, t, c): two resolution levels, no attention, no text (a job has one prompt)."""

    def __init__(self, device: torch.device, width: int = 32) -> None:
        super().__init__()
        self.unet = UNet2DModel(in_channels=4, out_channels=4, block_out_channels=(width, 2 * width),
                                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
        self.unet.class_embedding = camera_embedding(4 * width)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        self.to(device)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras,
                keep_camera: torch.Tensor | None = None) -> torch.Tensor:
        cond = camera_condition(cameras, keep_camera).to(z_t.device)
        return self.unet(z_t.float(), t.to(z_t.device), class_labels=cond).sample.float()
