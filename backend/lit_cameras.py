"""Camera batches that carry a random point light and shading mode (DreamFusion's per-step lighting)."""

from __future__ import annotations

from dataclasses import replace

import torch

from backend.cameras import Cameras, CameraSampler
from backend.shading import LightConfig, sample_light, sample_mode


class LitCameraSampler:
    """Draws cameras like `cameras` and gives each batch a light near the cameras and a shading mode."""

    def __init__(self, cameras: CameraSampler, light: LightConfig, generator: torch.Generator) -> None:
        light.validate()
        self.cameras = cameras
        self.light = light
        self.generator = generator

    def sample(self, batch: int = 1) -> Cameras:
        cams = self.cameras.sample(batch)
        return replace(cams, light=sample_light(cams.position, self.light, self.generator),
                       shading=sample_mode(self.light, self.generator))
