"""What every scene offers a stage: `render(cameras, size, mode) → SceneRender` and a preview.

Scenes are the parameters being optimised: the Latent-NeRF (`backend.scene.nerf_scene`), the latent
texture on a fixed mesh (`backend.scene.latent_texture`) and the DMTet mesh (`backend.scene.dmtet`). A
stage picks the mode; a task lists its stages, and one stage may hand its scene on to the next (the NeRF's
density becomes the DMTet grid's SDF, its colour field the mesh's texture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from backend.cameras import Cameras
from backend.latent import latent_to_rgb
from backend.render.volume import VolumeRender

#: render modes: the latent stage's 4 channels, or RGB as DreamFusion shades it (backend.shading.MODES)
RENDER_MODES = ("latent", "albedo", "lit", "textureless")

PREVIEW_CAMERA = {"elevation": 15.0, "azimuth": 30.0, "radius": 1.4, "fov": 50.0}


@dataclass
class SceneRender:
    """A scene's render and what regularisers read from it; each scene fills what it has."""

    image: torch.Tensor  # [B, C, H, W]: latents (C = 4) or RGB in [0, 1] (C = 3)
    latent: bool
    opacity: torch.Tensor | None = None  # [B, H, W] how much of each pixel is object
    rays: VolumeRender | None = None  # a volume render's samples: points, densities, weights, normals, depth
    surface: tuple[torch.Tensor, torch.Tensor] | None = None  # an extracted mesh's (vertices [N, 3], faces [F, 3])


# (render, step, total) → loss; step and total are the job's progress (see `backend.loop.Stage.step`)
Regulariser = Callable[[SceneRender, int, int], torch.Tensor]


class Scene(Protocol):
    def render(self, cameras: Cameras, size: int, mode: str) -> SceneRender:
        """The scene from `cameras` at size², in `mode` (one of RENDER_MODES), with the cameras' light."""

    def preview(self) -> np.ndarray:
        """A small RGB uint8 image of the current state [H, W, 3]."""


def to_preview(image: torch.Tensor, latent: bool) -> np.ndarray:
    """First image of a batch as uint8 RGB [H, W, 3] (latents through the linear approximation)."""
    rgb = latent_to_rgb(image[:1]) if latent else image[:1]
    return (rgb[0].clamp(0, 1).permute(1, 2, 0).detach().cpu().numpy() * 255).round().astype(np.uint8)
