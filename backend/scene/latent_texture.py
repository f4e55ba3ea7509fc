"""Latent-Paint's scene: a learnable H×W×4 latent texture on a fixed, UV-mapped mesh."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from backend.cameras import Cameras
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.regularisers import texture_smoothness
from backend.render.atlas import chart_neighbours, fill_empty, texel_charts
from backend.render.mesh_render import render_mesh
from backend.scene.background import DirectionalBackground, solid_backdrop
from backend.scene.base import SceneRender

INIT_RGB = (1.0, 0.0, 0.0)  # Latent-Paint starts from a faint red in latent space
# `texture_smoothness`'s edge, in each texture's units: about 5 levels of 8-bit colour (a latent unit is
# about 50 levels), so speckle is smoothed and colour edges are not
SMOOTH_EDGE = {False: 0.1, True: 0.02}


class LatentTexture(nn.Module):
    """The latent texture, an optional RGB texture for fine-tuning, and which texels gradients reached.

    Renders sample the texture with trilinear mip-mapping (`filtering`), so every texel under a pixel's
    footprint gets gradient; texels that none ever reached are filled from their seen neighbours
    (`filled_texture`) instead of keeping the flat init colour.
    RGB renders are shaded by the cameras' light (DreamFusion), so the fine-tuned texture is albedo.
    `smoothness` is the prior that neighbouring texels of one chart are alike, for detail no view resolves.
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, size: int,
                 rgb_size: int = 0, filtering: str = "mipmap", supersample: int = 2) -> None:
        super().__init__()
        self.register_buffer("vertices", vertices, persistent=False)
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("uvs", uvs, persistent=False)
        # one flat colour, no noise: views see (and so correct) the texture only at their own pixel scale,
        # so any init detail finer than that would survive every step as noise in flat regions
        init = rgb_to_latent(torch.tensor(INIT_RGB).view(1, 3, 1, 1))[0] * 0.3
        self.texture = nn.Parameter(init.expand(4, size, size).clone().to(vertices.device))
        self.background = DirectionalBackground(4).to(vertices.device)
        # the RGB texture of the optional fine-tuning stage; part of the state so a resumed job keeps it
        self.rgb_texture = nn.Parameter(torch.zeros(3, rgb_size, rgb_size, device=vertices.device))
        # uint8, not bool: checkpoints travel as plain numeric arrays
        self.register_buffer("rgb_started", torch.zeros((), dtype=torch.uint8, device=vertices.device))
        # texels a render's gradient reached (not the smoothness prior's, which reaches every texel)
        self.register_buffer("seen", torch.zeros(size, size, dtype=torch.uint8, device=vertices.device))
        self.filtering = filtering
        self.supersample = supersample  # renders are rasterised at this many samples per pixel, each way
        # optional: texels kept as given, never optimised (partial paint); see `keep`
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None  # (latent [4, S, S], mask [S, S])
        self._kept_rgb: tuple[torch.Tensor, torch.Tensor] | None = None
        self._neighbours: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # texture size → chart_neighbours

    def _mark_seen(self, grad: torch.Tensor) -> None:
        self.seen |= (grad.abs().sum(0) > 0).to(torch.uint8)

    def keep(self, latent: torch.Tensor, latent_mask: torch.Tensor, rgb: torch.Tensor | None = None,
             rgb_mask: torch.Tensor | None = None) -> None:
        """Hold the texels where the masks are true at `latent` [4, S, S] (and `rgb` [3, R, R]): every
        render uses those values, so only the others are optimised."""
        self._kept = (latent.to(self.texture), latent_mask.to(self.texture.device))
        self.texture.data = torch.where(latent_mask, self._kept[0], self.texture.data)
        if rgb is not None and rgb_mask is not None:
            self._kept_rgb = (rgb.to(self.texture), rgb_mask.to(self.texture.device))

    def _effective(self, rgb: bool, mark_seen: bool = False) -> torch.Tensor:
        """The texture renders see (the RGB one with `rgb`, else the latent one), with the kept texels in place."""
        if rgb:
            tex, kept = self.rgb_texture, self._kept_rgb
        else:
            tex, kept = self.texture, self._kept
            if mark_seen and tex.requires_grad and torch.is_grad_enabled():
                tex = tex.view_as(tex)  # a hook here sees this render's gradient alone
                tex.register_hook(self._mark_seen)
        return tex if kept is None else torch.where(kept[1], kept[0], tex)

    def smoothness(self, rgb: bool) -> torch.Tensor:
        """`texture_smoothness` of the RGB (`rgb`) or latent texture, kept texels in place so seams blend."""
        tex = self._effective(rgb)
        size = tex.shape[-1]
        if size not in self._neighbours:
            charts = texel_charts(self.uvs, self.faces, size)
            self._neighbours[size] = tuple(m.to(tex) for m in chart_neighbours(charts))
        return texture_smoothness(tex, *self._neighbours[size], edge=SMOOTH_EDGE[rgb])

    def filled_texture(self) -> torch.Tensor:
        """The latent texture with texels no gradient ever reached set to their nearest seen texel's value."""
        tex = self._effective(rgb=False).detach()
        seen = self.seen.bool()
        if self._kept is not None:
            seen = seen | self._kept[1]
        if seen.all() or not seen.any():
            return tex
        filled = fill_empty(tex.permute(1, 2, 0).cpu().numpy(), seen.cpu().numpy())
        return torch.as_tensor(np.ascontiguousarray(filled), device=tex.device).permute(2, 0, 1)

    def start_rgb(self, decoded: torch.Tensor) -> None:
        """Start RGB fine-tuning from the decoded latent texture (unless a resumed job already started it)."""
        if not bool(self.rgb_started):
            self.rgb_texture.data.copy_(decoded)
            self.rgb_started.fill_(1)

    def render(self, cameras: Cameras, size: int, mode: str = "latent") -> SceneRender:
        """Image [B, C, size, size] over the background, with its coverage [B, size, size] as the opacity.

        Latents (mode "latent"), or RGB from the fine-tuning stage's texture, whose background is then the
        latent background seen through the linear latent→RGB map, or on steps whose cameras carry a random
        background, that colour. RGB modes other than "albedo" are shaded by the cameras' light, so the
        texture that fits a lit target is its albedo.
        """
        rgb = mode != "latent"
        view = replace(cameras, shading=mode) if rgb else cameras
        color, coverage = render_mesh(self.vertices, self.faces, view, size, uvs=self.uvs,
                                      texture=self._effective(rgb, mark_seen=True), filtering=self.filtering,
                                      lit=rgb, supersample=self.supersample)
        if cameras.background is not None:  # this step's random solid colours, one per camera
            bg = solid_backdrop(cameras.background, latent=not rgb)[:, :, None, None]
        else:
            _, d = cameras.rays(size)
            bg = self.background(d).permute(0, 3, 1, 2)
            if rgb:
                bg = latent_to_rgb(bg)
        return SceneRender(color + (1 - coverage[:, None]) * bg, latent=not rgb, opacity=coverage)
