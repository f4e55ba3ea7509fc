"""Render a triangle mesh with per-vertex colours or a UV texture from orbit cameras."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.cameras import Cameras
from backend.render import nvdiffrast_raster
from backend.render import rasterize as torch_raster
from backend.shading import shade


def rasterizer_for(device: torch.device):  # noqa: ANN201 - a rasterize function
    """nvdiffrast on CUDA when it is installed, else the pure-torch reference (same interface)."""
    if device.type == "cuda" and nvdiffrast_raster.available():
        return nvdiffrast_raster.rasterize
    return torch_raster.rasterize


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `texture` [C, Ht, Wt] at UVs [..., 2] (v = 0 is the image's bottom row)."""
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], -1)
    flat = grid.reshape(1, 1, -1, 2)
    out = F.grid_sample(texture[None], flat, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.reshape(*uv.shape[:-1], texture.shape[0])


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    size: int,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    supersample: int = 2,
    lighting: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied colour [B, C, size, size] and coverage [B, size, size] in [0, 1].

    Colour comes from `texture` [C, Ht, Wt] sampled at `uvs` [V, 2] when given, else `vertex_colors`
    [V, C]. Rendered at `supersample`× and area-averaged so edges are antialiased like a volume render;
    composite with `image = colour + (1 − coverage) · background`. Differentiable with respect to the
    colours and the texture (not the geometry). With `lighting`, the colour is shaded by the cameras'
    light and mode (`Cameras.light`, `Cameras.shading`) with flat face normals turned towards the camera.
    """
    res = size * supersample
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    clip = torch.einsum("bij,vj->bvi", cameras.mvp(), homo)
    rast = rasterizer_for(vertices.device)(clip, faces, (res, res))
    hit = (rast[..., 3] > 0).to(vertices.dtype)
    if uvs is not None and texture is not None:
        color = sample_texture(texture, torch_raster.interpolate(uvs, rast, faces))
    else:
        color = torch_raster.interpolate(vertex_colors, rast, faces)
    if lighting and cameras.light is not None and cameras.shading != "albedo":
        color = _shade_pixels(color, rast, vertices, faces, cameras)
    color = (color * hit[..., None]).permute(0, 3, 1, 2)
    if supersample > 1:
        color = F.avg_pool2d(color, supersample)
        hit = F.avg_pool2d(hit[:, None], supersample)[:, 0]
    return color, hit


def _shade_pixels(color: torch.Tensor, rast: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
                  cameras: Cameras) -> torch.Tensor:
    """DreamFusion shading of per-pixel colours [B, H, W, C] with each pixel's face normal and position."""
    hit = rast[..., 3] > 0
    if not hit.any():
        return color
    face = rast[..., 3].long()[hit] - 1
    p = vertices[faces]
    normals = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    points = torch_raster.interpolate(vertices, rast, faces)[hit]
    batch = torch.nonzero(hit)[:, 0]
    n = normals[face]
    # a face seen from behind is lit as its front: the target's winding must not change its shading
    n = torch.where(((cameras.position[batch] - points) * n).sum(-1, keepdim=True) < 0, -n, n)
    out = color.clone()
    out[hit] = shade(color[hit], n, points, cameras.light, cameras.shading, batch)
    return out
