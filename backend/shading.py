"""DreamFusion shading: albedo lit by a point light plus ambient, and the per-step choice of render mode.

c = ρ ⊙ (ℓ_p ⊙ max(0, n·(ℓ − μ)/‖ℓ − μ‖) + ℓ_a), with ρ the albedo, n the unit surface normal at the
point μ, ℓ the light's position, ℓ_p its colour and ℓ_a the ambient colour. "textureless" replaces ρ by
white (geometry only), "albedo" skips shading. The light is drawn per step around the camera and travels
with the camera batch (`Cameras.light`), so a prior that renders its own answer shades it the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from backend.errors import ConfigError
from backend.transfer import to_device

MODES = ("albedo", "lit", "textureless")  # RGB render modes; the latent stage renders "latent"


@dataclass
class Light:
    """A point light per camera: position [B, 3] in the unit frame, colour [B, 3] and ambient [B, 3]."""

    position: torch.Tensor
    color: torch.Tensor
    ambient: torch.Tensor

    def take(self, index: torch.Tensor) -> Light:
        return Light(self.position[index], self.color[index], self.ambient[index])


@dataclass
class LightConfig:
    """How each step's light and render mode are drawn (threestudio's DreamFusion defaults)."""

    distance_range: tuple[float, float] = (0.8, 1.5)  # light distance from the origin
    perturb: float = 1.0  # std of the random offset of the light's direction from the camera's
    intensity: float = 0.9  # ℓ_p, grey
    ambient: float = 0.1  # ℓ_a, grey
    p_lit: float = 0.5  # probabilities of each mode per step; the rest is "albedo"
    p_textureless: float = 0.25

    def validate(self, prefix: str = "light") -> None:
        lo, hi = self.distance_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ConfigError(f"{prefix}.distance_range must be a positive (low, high) range, got {(lo, hi)}")
        for name in ("perturb", "intensity", "ambient", "p_lit", "p_textureless"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{prefix}.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.p_lit + self.p_textureless > 1 + 1e-9:
            raise ConfigError(f"{prefix}.p_lit + {prefix}.p_textureless must be at most 1")


def sample_light(camera_positions: torch.Tensor, config: LightConfig, generator: torch.Generator) -> Light:
    """A light per camera [B, 3]: near the camera's direction (perturbed), at a random distance."""
    b = camera_positions.shape[0]
    direction = camera_positions / camera_positions.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    offset = to_device(torch.randn(b, 3, generator=generator), camera_positions) * config.perturb
    direction = direction + offset
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    lo, hi = config.distance_range
    distance = to_device(lo + (hi - lo) * torch.rand(b, 1, generator=generator), camera_positions)
    grey = torch.ones_like(direction)
    return Light(direction * distance, grey * config.intensity, grey * config.ambient)


def sample_mode(config: LightConfig, generator: torch.Generator) -> str:
    """One of `MODES` for this step, with the configured probabilities (drawn on the host: no sync)."""
    u = float(torch.rand((), generator=generator))
    if u < config.p_lit:
        return "lit"
    if u < config.p_lit + config.p_textureless:
        return "textureless"
    return "albedo"


def shade(albedo: torch.Tensor, normals: torch.Tensor, points: torch.Tensor, light: Light | None,
          mode: str, batch_index: torch.Tensor | None = None) -> torch.Tensor:
    """Shaded colour [N, 3] of points [N, 3] with albedo [N, 3] and unit normals [N, 3].

    `batch_index` [N] says which camera (and so which light) each point belongs to; None means all are
    camera 0's. "albedo" (or no light) returns the albedo unchanged.
    """
    if mode == "albedo" or light is None:
        return albedo
    if mode not in MODES:
        raise ValueError(f"unknown shading mode {mode!r}")
    pick = (lambda v: v[batch_index]) if batch_index is not None else (lambda v: v[:1].expand(len(points), -1))
    to_light = pick(light.position) - points
    to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp(min=0)
    lighting = pick(light.color) * lambert + pick(light.ambient)
    base = torch.ones_like(albedo) if mode == "textureless" else albedo
    return base * lighting
