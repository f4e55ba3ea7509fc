"""The linear bridge between Stable Diffusion's 4-channel latent space and RGB.

Latent-NeRF observed that SD's VAE latents map to RGB almost linearly; its 4×3 matrix turns a latent
into RGB in [-1, 1]. `rgb_to_latent` is the pseudo-inverse, so `latent_to_rgb(rgb_to_latent(x)) == x`
exactly for RGB: `TargetGuidance` uses this pair as its VAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# rows: latent channels L1..L4, columns: R, G, B (Latent-NeRF's approximation)
LATENT_TO_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)
RGB_TO_LATENT = torch.linalg.pinv(LATENT_TO_RGB)  # [3, 4]


def latent_to_rgb(latent: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Latents (4 channels along `dim`) → RGB in [0, 1] (not clamped)."""
    m = LATENT_TO_RGB.to(latent)
    rgb = torch.movedim(torch.movedim(latent, dim, -1) @ m, -1, dim)
    return (rgb + 1) / 2


def rgb_to_latent(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """RGB in [0, 1] (3 channels along `dim`) → the latent that `latent_to_rgb` maps back onto it."""
    m = RGB_TO_LATENT.to(rgb)
    return torch.movedim(torch.movedim(rgb * 2 - 1, dim, -1) @ m, -1, dim)


class LatentDecoderLayer(torch.nn.Module):
    """Learnable 4→3 layer for RGB refinement, initialised with Latent-NeRF's matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(LATENT_TO_RGB.clone())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:  # [..., 4] → [..., 3] in [0, 1]
        return (latent @ self.weight + 1) / 2


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample or bilinearly upsample square [B, C, H, W] images to size × size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
