"""Latent-Paint's scene: a learnable H×W×4 latent texture on a fixed, UV-mapped mesh."""

from __future__ import annotations

import torch
from torch import nn

from backend.cameras import Cameras
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.render.mesh_render import render_mesh
from backend.scene.background import DirectionalBackground, solid_backdrop

INIT_RGB = (1.0, 0.0, 0.0)  # Latent-Paint starts from a noisy, faint red in latent space


class LatentTexture(nn.Module):
    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, size: int,
                 generator: torch.Generator, rgb_size: int = 0) -> None:
        super().__init__()
        self.register_buffer("vertices", vertices, persistent=False)
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("uvs", uvs, persistent=False)
        init = rgb_to_latent(torch.tensor(INIT_RGB).view(1, 3, 1, 1))[0]
        noise = torch.randn(4, size, size, generator=generator)
        self.texture = nn.Parameter((init * 0.3 + 0.4 * noise).to(vertices.device))
        self.background = DirectionalBackground(4).to(vertices.device)
        # the RGB texture of the optional fine-tuning stage; part of the state so a resumed job keeps it
        self.rgb_texture = nn.Parameter(torch.zeros(3, rgb_size, rgb_size, device=vertices.device))
        # uint8, not bool: checkpoints travel as plain numeric arrays
        self.register_buffer("rgb_started", torch.zeros((), dtype=torch.uint8, device=vertices.device))
        self.rgb = False

    def start_rgb(self, decoded: torch.Tensor) -> None:
        """Switch to RGB fine-tuning, starting from the decoded latent texture unless resumed mid-way."""
        if not bool(self.rgb_started):
            self.rgb_texture.data.copy_(decoded)
            self.rgb_started.fill_(1)
        self.rgb = True

    def render(self, cameras: Cameras, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image [B, C, size, size] over the background and coverage [B, size, size].

        Latents, or in the fine-tuning stage RGB, whose background is then the latent background seen
        through the linear latent→RGB map; on steps whose cameras carry a random background, that colour.
        """
        tex = self.rgb_texture if self.rgb else self.texture
        color, coverage = render_mesh(self.vertices, self.faces, cameras, size, uvs=self.uvs, texture=tex)
        if cameras.background is not None:  # this step's random solid colours, one per camera
            bg = solid_backdrop(cameras.background, latent=not self.rgb)[:, :, None, None]
        else:
            _, d = cameras.rays(size)
            bg = self.background(d).permute(0, 3, 1, 2)
            if self.rgb:
                bg = latent_to_rgb(bg)
        return color + (1 - coverage[:, None]) * bg, coverage
