"""Volume rendering of a density + feature field inside a bounding sphere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backend.errors import ConfigError

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points → (density, features)


@dataclass
class VolumeConfig:
    samples: int = 64  # stratified samples per ray
    min_near: float = 0.1

    def validate(self) -> None:
        if int(self.samples) < 2:
            raise ConfigError("render.samples must be at least 2")


@dataclass
class VolumeRender:
    image: torch.Tensor  # [B, C, H, W] features composited over the background
    opacity: torch.Tensor  # [B, H, W] Σ w: how much of each pixel is object
    depth: torch.Tensor  # [B, H, W] expected distance along the ray
    points: torch.Tensor  # [R, S, 3] sample positions (R rays)
    sigmas: torch.Tensor  # [R, S] densities there
    weights: torch.Tensor  # [R, S] compositing weights
    t_mid: torch.Tensor  # [R, S] sample distances


def intersect_sphere(o: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of unit rays with the origin-centred sphere; exit ≤ entry means a miss."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    near, far = -b - root, -b + root
    miss = disc <= 0
    return near, torch.where(miss, near, far)


def composite(sigma: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Compositing weights w_i = α_i · Π_{j<i}(1 − α_j) with α = 1 − exp(−σδ)."""
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], -1), -1)[:, :-1]
    return alpha * trans


class VolumeRenderer:
    def __init__(self, config: VolumeConfig, bound: float) -> None:
        config.validate()
        self.config = config
        self.bound = bound

    def render(
        self,
        field: Field,
        background: Callable[[torch.Tensor], torch.Tensor],
        origins: torch.Tensor,
        directions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> VolumeRender:
        """Render rays [B, H, W, 3]; `generator` set means stratified jitter (training), None means midpoints."""
        b, h, w, _ = origins.shape
        o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        near, far = intersect_sphere(o, d, self.bound)
        near = near.clamp(min=self.config.min_near)
        far = torch.maximum(far, near)
        s = self.config.samples
        u = torch.linspace(0, 1, s + 1, device=o.device)
        edges = near[:, None] + (far - near)[:, None] * u  # [R, S+1] bin edges
        if generator is not None:
            jitter = torch.rand(o.shape[0], s, generator=generator).to(o.device)
        else:
            jitter = torch.full((o.shape[0], s), 0.5, device=o.device)
        t_mid = edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * jitter
        deltas = edges[:, 1:] - edges[:, :-1]
        points = o[:, None] + d[:, None] * t_mid[..., None]
        sigma, feats = field(points.reshape(-1, 3))
        sigma = sigma.view(-1, s)
        weights = composite(sigma, deltas)
        opacity = weights.sum(-1)
        feats = feats.view(-1, s, feats.shape[-1])
        fg = (weights[..., None] * feats).sum(1)
        bg = background(d)
        image = fg + (1 - opacity)[:, None] * bg
        depth = (weights * t_mid).sum(-1)
        return VolumeRender(
            image=image.view(b, h, w, -1).permute(0, 3, 1, 2),
            opacity=opacity.view(b, h, w),
            depth=depth.view(b, h, w),
            points=points,
            sigmas=sigma,
            weights=weights,
            t_mid=t_mid,
        )
