"""The Latent-NeRF as a scene: its field and volume renderer behind `render(cameras, size, mode)`.

Mode "latent" renders the 4 latent channels; "albedo", "lit" and "textureless" render RGB through the
learnable 4→3 layer, shaded DreamFusion-style with the cameras' light and normals from the density's
gradient (`backend.render.volume.Shader`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from backend.cameras import Cameras
from backend.render.volume import Shader, VolumeConfig, VolumeRenderer
from backend.scene.background import solid_backdrop
from backend.scene.base import PREVIEW_CAMERA, SceneRender, to_preview
from backend.scene.nerf import LatentNeRF, NeRFConfig
from backend.shading import shade
from backend.speed import FieldSpeedConfig


class NeRFScene:
    """The Latent-NeRF with its renderer: renders latents or RGB for a batch of cameras."""

    def __init__(self, nerf: NeRFConfig, render: VolumeConfig, device: torch.device,
                 generator: torch.Generator, speed: FieldSpeedConfig) -> None:
        self.nerf = LatentNeRF(nerf).to(device)
        self.renderer = VolumeRenderer(render, nerf.bound, speed.occupancy)
        self.generator = generator
        self._field = self.nerf.field
        if speed.compile_field != "off":
            # not static: the sample count differs between stages, previews and importance passes
            self._field = torch.compile(self.nerf.field, mode=speed.compile_field)

    def field(self, rgb: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Points [N, 3] → (density [N], colour [N, C]) in a render's space: latent, or RGB (`rgb`)."""

        def at(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sigma, feats = self._field(x)
            return sigma, self.nerf.color(feats, rgb)

        return at

    def render(self, cameras: Cameras, size: int, mode: str, train: bool = True,
               normals: bool = False) -> SceneRender:
        """Latents (mode "latent") or RGB shaded as `mode` with the cameras' light; `normals` also when
        albedo is rendered (the orientation loss needs them)."""
        o, d = cameras.rays(size)
        rgb = mode != "latent"
        shader = None
        if mode in ("lit", "textureless") or (normals and mode != "latent"):
            lit = None if mode in ("albedo", "latent") else (
                lambda c, n, p, cam: shade(c, n, p, cameras.light, mode, cam))
            shader = Shader(self.nerf.density, lit)
        if cameras.background is not None:  # this step's random solid colours, one per camera
            solid = solid_backdrop(cameras.background, latent=not rgb).repeat_interleave(size**2, 0)
            background = lambda _directions: solid  # noqa: E731 - rays are flattened camera by camera
        else:
            background = lambda directions: self.nerf.background(directions, rgb)  # noqa: E731
        out = self.renderer.render(self.field(rgb), background, o, d, self.generator if train else None, shader)
        return SceneRender(out.image, latent=not rgb, opacity=out.opacity, rays=out)

    def preview(self, size: int, rgb: bool) -> np.ndarray:
        """The preview camera's view at `size`² in a stage's space (RGB as albedo, or latents)."""
        cams = Cameras.orbit(**PREVIEW_CAMERA, device=next(self.nerf.parameters()).device)
        with torch.no_grad():
            out = self.render(cams, size, "albedo" if rgb else "latent", train=False)
        return to_preview(out.image, out.latent)
