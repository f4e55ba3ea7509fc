"""A generate job's reference view: the view a reference image was seen from, fitted to that image.

In that view the render's colour is fitted to the image inside its mask, and its opacity to the mask, at
every stage that renders colour; score distillation with the prompt shapes every other view (Magic123,
RealFusion, DreamGaussian's image-to-3D). The view is rendered unlit (albedo) over a fixed grey backdrop,
so no learned background and no light takes part in the comparison.

- **Latent stage: through the encoder.** The image, over the backdrop at 8× the render's size, is
  encoded once by the guidance's own encoder (Stable Diffusion's VAE; the analytic priors' exact linear
  map), and the latent render is fitted to that encoding in the latent pixels wholly inside the mask. The
  stage stays in the prior's latent space, and no decoder runs per step.
- **RGB refinement and mesh stages: directly**, the render's RGB against the image's in the pixels wholly
  inside the mask.

Both losses are means (the colour's over the pixels inside the mask, the silhouette's over the frame), and
each weighs `image.rgb_weight` / `image.mask_weight` per latent pixel it covers (a latent pixel is 8×8 RGB
pixels), so against score distillation, whose pull is per latent pixel, one weight holds at every
stage's render size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from backend.cameras import Cameras
from backend.guidance.analytic import VAE_FACTOR
from backend.guidance.base import Guidance
from backend.latent import resize
from backend.reference import ImageConfig, ReferenceImage, mask_inside
from backend.regularisers import ramp
from backend.render.mesh_render import render_mesh
from backend.scene.base import SceneRender

BACKDROP = (0.5, 0.5, 0.5)  # the reference view's solid background: far from white and from black objects


class ReferenceView:
    """The reference view's losses for one job; called by each step with that stage's render."""

    def __init__(self, image: ReferenceImage, config: ImageConfig, guidance: Guidance,
                 device: torch.device | str) -> None:
        self.image, self.config, self.guidance = image, config, guidance
        self.cameras = reference_cameras(config, device)
        self.backdrop = self.cameras.background[0]
        self._targets: dict[tuple[bool, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def targets(self, latent: bool, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the image [1, C, size, size] in the render's space, which pixels are wholly inside the mask
        [size, size], the mask's coverage [size, size]) for a render of `size`², made once per size."""
        key = (latent, size)
        if key not in self._targets:
            device = self.backdrop.device
            _, coverage = self.image.tensors(size, device)
            if latent:
                rgb, mask = self.image.tensors(size * VAE_FACTOR, device, self.backdrop)
                with torch.no_grad():
                    target = resize(self.guidance.encode(rgb[None].to(self.guidance.device)).float(), size)
                inside = mask_inside(mask, VAE_FACTOR)
            else:
                target = self.image.tensors(size, device, self.backdrop)[0][None]
                inside = mask_inside(coverage, 1)
            self._targets[key] = (target.to(device), inside, coverage)
        return self._targets[key]

    def __call__(self, render: Callable[[Cameras], SceneRender], step: int,
                 total: int) -> dict[str, tuple[float, torch.Tensor]]:
        """The weighted losses of this step's reference render, or none on steps between renders."""
        every = self.config.every
        if step % every:
            return {}
        out: SceneRender = render(self.cameras)
        size = out.image.shape[-1]
        target, inside, coverage = self.targets(out.latent, size)
        per_pixel = 1.0 if out.latent else 1.0 / VAE_FACTOR**2  # latent pixels per pixel of this render
        inside_f = inside.to(out.image.dtype)
        count = float(inside_f.sum())
        colour = (((out.image - target) ** 2).mean(1)[0] * inside_f).sum() / max(count, 1.0)
        silhouette = ((out.opacity[0] - coverage) ** 2).mean()
        scale = every * per_pixel * (ramp(step, total, self.config.ramp) if self.config.ramp else 1.0)
        return {"image_rgb": (self.config.rgb_weight * scale * count, colour),
                "image_mask": (self.config.mask_weight * scale * size**2, silhouette)}


def reference_cameras(config: ImageConfig, device: torch.device | str) -> Cameras:
    """The reference view's camera, as the job renders it (grey backdrop, unlit)."""
    return replace(config.camera(device), background=torch.tensor(BACKDROP, device=device)[None])


def silhouette_box(vertices: np.ndarray, faces: np.ndarray, config: ImageConfig,
                   size: int = 256) -> tuple[float, float, float, float] | None:
    """(top, left, bottom, right) as fractions of the reference view's frame: the bounding box of a mesh's
    outline there (`vertices` [V, 3] in the unit volume), or None when the view does not see it."""
    cameras = config.camera()
    coverage = render_mesh(torch.as_tensor(vertices, dtype=torch.float32), torch.as_tensor(faces), cameras, size,
                           vertex_colors=torch.ones(len(vertices), 1), supersample=1)[1][0]
    rows, cols = np.nonzero(coverage.numpy() > 0.5)
    if rows.size == 0:
        return None
    return rows.min() / size, cols.min() / size, (rows.max() + 1) / size, (cols.max() + 1) / size
