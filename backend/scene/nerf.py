"""Latent-NeRF: a hash-grid field of density and 4 latent channels, with a view-dependent background.

In the latent stage the field renders straight into Stable Diffusion's latent space; the RGB refinement
stage passes the same features through `LatentDecoderLayer`, a learnable 4→3 map initialised with
Latent-NeRF's latent→RGB matrix, and renders RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from backend.errors import ConfigError
from backend.latent import LatentDecoderLayer
from backend.scene.background import DirectionalBackground, mlp
from backend.scene.hashgrid import HashGrid


@dataclass
class NeRFConfig:
    levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048  # Latent-NeRF: 2048 × bound
    hidden_dim: int = 64
    hidden_layers: int = 3
    bound: float = 1.0  # the field lives in the sphere of this radius
    blob_density: float = 5.0  # Gaussian density blob at the centre (Latent-NeRF: 5, σ = 0.2)
    blob_radius: float = 0.2
    background_frequencies: int = 6
    background_hidden: int = 64

    def validate(self) -> None:
        for name in ("levels", "features_per_level", "log2_table_size", "base_resolution", "max_resolution",
                     "hidden_dim", "hidden_layers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"nerf.{name} must be at least 1")
        if self.log2_table_size > 24:
            raise ConfigError("nerf.log2_table_size above 24 would not fit in memory")
        if not self.bound > 0 or not self.blob_radius > 0:
            raise ConfigError("nerf.bound and nerf.blob_radius must be positive")


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped, as Instant-NGP uses for density, so early steps do not explode."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


class LatentNeRF(nn.Module):
    def __init__(self, config: NeRFConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = HashGrid(config.levels, config.features_per_level, config.log2_table_size,
                                config.base_resolution, config.max_resolution)
        self.sigma_net = mlp(self.encoder.output_dim, 1 + 4, config.hidden_dim, config.hidden_layers)
        self.bg_net = DirectionalBackground(4, config.background_frequencies, config.background_hidden)
        self.decoder = LatentDecoderLayer()

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return c.blob_density * torch.exp(-(x**2).sum(-1) / (2 * c.blob_radius**2))

    def field(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points [N, 3] in the unit frame → density [N] and latent features [N, 4]."""
        h = self.sigma_net(self.encoder((x / self.config.bound + 1) / 2))
        sigma = _TruncExp.apply(h[:, 0] + self.blob(x))
        return sigma, h[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.field(x)[0]

    def color(self, features: torch.Tensor, rgb: bool) -> torch.Tensor:
        """Features [..., 4] in a render's space: latent as they are, or RGB in [0, 1] through the 4→3 layer."""
        return self.decoder(features) if rgb else features

    def rgb_at(self, x: torch.Tensor, spread: float = 0.02, normals: torch.Tensor | None = None) -> torch.Tensor:
        """RGB [N, 3] in [0, 1] at points [N, 3] (for baking), whichever stage the field is in.

        A marching-cubes surface sits where the density crosses a threshold, often in the soft shell
        outside where colour was learnt; so each point takes the density-weighted mean colour of a
        stencil `spread` × bound around it, which leans towards the opaque side. With the surface's
        outward `normals` [N, 3] the stencil is the point and the one `spread` inwards (2 field points);
        without, the point and its 6 axis neighbours (7 field points).
        """
        step = spread * self.config.bound
        if normals is not None:
            pts = torch.stack([x, x - step * normals], 1).reshape(-1, 3)
        else:
            offsets = torch.cat([torch.zeros(1, 3), torch.eye(3), -torch.eye(3)]).to(x) * step
            pts = (x[:, None] + offsets).reshape(-1, 3)
        sigma, feats = self.field(pts)
        rgb = self.decoder(feats).clamp(0, 1).view(len(x), -1, 3)
        w = sigma.view(len(x), -1, 1) + 1e-6
        return (w * rgb).sum(1) / w.sum(1)

    def background(self, directions: torch.Tensor, rgb: bool) -> torch.Tensor:
        """View directions [N, 3] → background features [N, C] in a render's space (latent or RGB)."""
        return self.color(self.bg_net(directions), rgb)

    def param_groups(self, lr: float, grid_lr_scale: float = 10.0, rgb: bool = False) -> list[dict]:
        """Latent-NeRF's optimiser groups: the hash table learns `grid_lr_scale` times faster; the 4→3 layer
        learns only in stages that render RGB (`rgb`)."""
        return [
            {"params": list(self.encoder.parameters()), "lr": lr * grid_lr_scale},
            {"params": list(self.sigma_net.parameters()) + list(self.bg_net.parameters()), "lr": lr},
            {"params": list(self.decoder.parameters()), "lr": lr if rgb else 0.0},
        ]
