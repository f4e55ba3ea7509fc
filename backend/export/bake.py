"""Baking a colour field into a UV texture."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from backend.export.fields import Field, evaluate
from backend.mesh import Mesh
from backend.render.rasterize import interpolate, rasterize


def bake_texture(mesh: Mesh, color_fn: Field, size: int, device: torch.device | str = "cpu") -> np.ndarray:
    """A [size, size, 3] uint8 texture of `color_fn` at the surface points under each texel of `mesh`'s UVs.

    Row 0 is the top of the image, which is UV v = 1: trimesh's (OpenGL's) convention, so the image is
    written as is. Texels no triangle covers take the colour of the nearest covered texel, so seams
    and mipmaps do not bleed the background into the charts.
    """
    uv = torch.as_tensor(mesh.uvs, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, device=device)
    # the atlas as clip coordinates: u → x, v → y (up), one flat layer at depth 0
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)
    rast = rasterize(clip, faces, (size, size))
    points = interpolate(torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device), rast, faces)[0]
    covered = rast[0, ..., 3] > 0
    colors = torch.zeros(size, size, 3, device=device)
    colors[covered] = evaluate(color_fn, points[covered], channels=3)
    texture = (colors.nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return fill_empty(texture, covered.cpu().numpy())


def fill_empty(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """`image` with every pixel outside `covered` set to its nearest covered pixel's value."""
    if not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]
