"""A background that depends only on the view direction: a tiny MLP on a frequency encoding.

Kept deliberately small (Latent-NeRF's advice) so it cannot learn the object itself.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.latent import rgb_to_latent


def mlp(dim_in: int, dim_out: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dim_in if i == 0 else hidden, dim_out if i == layers - 1 else hidden))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class DirectionalBackground(nn.Module):
    def __init__(self, channels: int = 4, frequencies: int = 6, hidden: int = 64) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.net = mlp(3 * 2 * frequencies + 3, channels, hidden, 2)

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        """Unit view directions [..., 3] → background features [..., channels]."""
        freqs = 2.0 ** torch.arange(self.frequencies, device=directions.device)
        angles = directions[..., None, :] * freqs[:, None]
        enc = torch.cat([directions, torch.sin(angles).flatten(-2), torch.cos(angles).flatten(-2)], -1)
        return self.net(enc)


def solid_backdrop(colors: torch.Tensor, latent: bool) -> torch.Tensor:
    """A step's random background colours [B, 3] (RGB) in the render's space: [B, 4] latents or [B, 3] RGB.

    Through the same RGB→latent map the analytic priors encode their answers with, so a latent render and
    the prior's answer sit on the same colour.
    """
    return rgb_to_latent(colors, dim=-1) if latent else colors
