"""Sketch-Shape guidance (Latent-NeRF): follow a coarse blockout of primitives, loosely near its surface.

For the points the volume renderer samples, the target occupancy is inside(sketch) by generalised
winding number, and the loss is the cross-entropy between the NeRF's occupancy 1 − exp(−σ·δ) and that
target, weighted by 1 − exp(−d²/2σ_S²) where d is the distance to the sketch's surface: strict far from
the surface, free near it, so details can grow where the sketch is only a rough guess. σ_S is the
artist's "how loosely to follow the sketch" knob, in units of the normalised volume (the sketch fits a
sphere of radius 0.7, as Latent-NeRF fits it, so its σ_S of 0.3 means the same here).

The sketch never changes during a job, so inside-ness and distance are computed once on a grid and
looked up trilinearly at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import ConfigError
from backend.mesh import Frame, Mesh, validate_mesh
from backend.winding import surface_distance, winding_number

OCCUPANCY_DELTA = 0.2  # Latent-NeRF's fixed step for turning density into occupancy


@dataclass
class SketchConfig:
    looseness: float = 0.3  # σ_S: distance from the sketch's surface within which the NeRF is free
    weight: float = 1.0  # loss weight (mean over the renderer's samples)
    grid_resolution: int = 128  # precomputed occupancy / distance grid over the unit volume
    # the sketch is scaled to fit this sphere for training (Latent-NeRF's mesh_scale: 0.7 of the unit volume;
    # at 0.5 a sketched object covered about half the latent pixels it does there)
    radius: float = 0.7

    def validate(self) -> None:
        if not 0.0 < self.looseness <= 2.0:
            raise ConfigError(f"sketch.looseness must be in (0, 2], got {self.looseness}",
                              "0.1 follows the sketch tightly, 0.5 treats it as a rough hint")
        if self.weight < 0:
            raise ConfigError(f"sketch.weight must be ≥ 0, got {self.weight}")
        if not 16 <= self.grid_resolution <= 512:
            raise ConfigError(f"sketch.grid_resolution must be in [16, 512], got {self.grid_resolution}")
        if not 0.1 <= self.radius <= 0.9:
            raise ConfigError(f"sketch.radius must be in [0.1, 0.9], got {self.radius}")


class SketchShape:
    """A sketch mesh placed in the unit volume, with its precomputed occupancy and distance grids."""

    def __init__(self, sketch: Mesh, config: SketchConfig, bound: float = 1.0,
                 device: torch.device | str = "cpu", front_yaw: float = 0.0) -> None:
        config.validate()
        sketch = validate_mesh(sketch, "sketch")
        self.config = config
        self.bound = bound
        self.frame = Frame.fit(sketch.vertices, config.radius, front_yaw)  # the front the artist gave it
        self.vertices, self.faces = self.frame.to_unit(sketch.vertices), sketch.faces
        n = config.grid_resolution
        axis = np.linspace(-bound, bound, n)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        inside = winding_number(grid, self.vertices, self.faces) > 0.5
        dist = surface_distance(grid, self.vertices, self.faces)
        grids = torch.as_tensor(np.stack([inside, dist]).astype(np.float32), device=device)
        # [1, 2, D, H, W] with grid_sample's (x, y, z) ↔ (W, H, D) axis order
        self._grids = grids.view(2, n, n, n).permute(0, 3, 2, 1)[None].contiguous()

    def lookup(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside-ness in [0, 1] and distance to the sketch's surface at unit-frame points [N, 3]."""
        coords = (points / self.bound).view(1, -1, 1, 1, 3).to(self._grids.dtype)
        vals = F.grid_sample(self._grids, coords, mode="bilinear", padding_mode="border", align_corners=True)
        vals = vals.view(2, -1)
        return vals[0], vals[1]

    def loss(self, points: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Latent-NeRF's sketch loss on sampled points [N, 3] with densities [N]."""
        inside, dist = self.lookup(points.detach().reshape(-1, 3))
        target = (inside > 0.5).float().clamp(0.01, 0.99)
        weight = 1 - torch.exp(-dist**2 / (2 * self.config.looseness**2))
        occupancy = (1 - torch.exp(-OCCUPANCY_DELTA * sigmas.reshape(-1))).clamp(0, 1.1)
        # the NeRF's occupancy weighs the sketch's log-odds linearly (Latent-NeRF's argument order),
        # so the push is bounded even where the NeRF starts far from the sketch
        ce = -(occupancy * torch.log(target) + (1 - occupancy) * torch.log(1 - target))
        return (ce * weight).mean()
