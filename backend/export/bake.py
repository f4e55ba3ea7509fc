"""Baking a colour field into a UV texture."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from backend.export.progress import ExportProgress
from backend.fields import Field, evaluate
from backend.mesh import Mesh
from backend.render.atlas import fill_empty
from backend.render.rasterize import interpolate, rasterize


def takes_normals(color_fn: Callable) -> bool:
    """Whether a colour field accepts the surface's outward normals (as `normals=`) beside the points."""
    try:
        return "normals" in inspect.signature(color_fn).parameters
    except (TypeError, ValueError):  # a builtin or C extension without a signature: points only
        return False


def bake_texture(mesh: Mesh, color_fn: Field, size: int, device: torch.device | str = "cpu",
                 normals: np.ndarray | None = None, chunk: int = 1 << 15,
                 progress: ExportProgress | None = None) -> np.ndarray:
    """A [size, size, 3] uint8 texture of `color_fn` at the surface points under each texel of `mesh`'s UVs.

    `color_fn` is called once per covered texel: with the texel's surface points, and with its interpolated
    outward unit `normals` ([V, 3] per vertex of `mesh`) when both it takes them and they are given.
    The texels go to `color_fn` in chunks of `chunk`; `progress` hears the "bake" sub-step chunk by chunk.
    Row 0 is the top of the image, which is UV v = 1: trimesh's (OpenGL's) convention, so the image is
    written as is. Texels no triangle covers take the colour of the nearest covered texel, so seams
    and mipmaps do not bleed the background into the charts.
    """
    uv = torch.as_tensor(mesh.uvs, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, device=device)
    # the atlas as clip coordinates: u → x, v → y (up), one flat layer at depth 0
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)
    rast = rasterize(clip, faces, (size, size))
    covered = rast[0, ..., 3] > 0
    attributes = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    with_normals = normals is not None and takes_normals(color_fn)
    if with_normals:
        attributes = torch.cat([attributes, torch.as_tensor(normals, dtype=torch.float32, device=device)], -1)
    texel = interpolate(attributes, rast, faces)[0][covered]
    del rast
    if with_normals:
        n = torch.nn.functional.normalize(texel[:, 3:], dim=-1)
        query = torch.cat([texel[:, :3], n], -1)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return color_fn(x[:, :3], normals=x[:, 3:])
    else:
        query, fn = texel, color_fn
    progress = progress or ExportProgress(None, {})
    progress.start("bake", -(-len(query) // chunk))
    colors = torch.zeros(size, size, 3, device=device)
    colors[covered] = evaluate(fn, query, channels=3, chunk=chunk, on_chunk=lambda _: progress.advance())
    progress.finish()
    texture = (colors.nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return fill_empty(texture, covered.cpu().numpy())

