"""Render a triangle mesh with per-vertex colours or a UV texture from orbit cameras."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.cameras import Cameras
from backend.render import nvdiffrast_raster
from backend.render import rasterize as torch_raster
from backend.render.texture_sampling import nvdiffrast_mipmap, sample_bilinear, sample_mipmap, uv_derivatives
from backend.shading import shade

FILTERS = ("mipmap", "bilinear")


def rasterizer_for(device: torch.device):  # noqa: ANN201 - a rasterize function
    """nvdiffrast on CUDA when it is installed, else the pure-torch reference (same interface)."""
    if device.type == "cuda" and nvdiffrast_raster.available():
        return nvdiffrast_raster.rasterize
    return torch_raster.rasterize


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `texture` [C, Ht, Wt] at UVs [..., 2] (v = 0 is the image's bottom row)."""
    return sample_bilinear(texture, uv)


def _texture_lookup(texture: torch.Tensor, clip: torch.Tensor, faces: torch.Tensor, rast: torch.Tensor,
                    uvs: torch.Tensor, filtering: str) -> torch.Tensor:
    uv = torch_raster.interpolate(uvs, rast, faces)
    if filtering == "bilinear":
        return sample_bilinear(texture, uv)
    uv_da = uv_derivatives(clip, faces, rast, uvs)
    if texture.is_cuda and nvdiffrast_raster.available():
        return nvdiffrast_mipmap(texture, uv, uv_da)
    return sample_mipmap(texture, uv, uv_da)


def shade_pixels(color: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, rast: torch.Tensor,
                 cameras: Cameras) -> torch.Tensor:
    """RGB pixels [B, H, W, 3] lit by `cameras.light` in `cameras.shading` mode (DreamFusion shading).

    Normals are the faces' geometric normals, turned towards the camera so that a mesh with
    inconsistent winding shades the same from either side. "albedo" or no light returns `color`.
    """
    if cameras.shading == "albedo" or cameras.light is None:
        return color
    ids = rast[..., 3].long()
    hit = ids > 0
    tri = faces.long()
    v0, v1, v2 = (vertices[tri[:, k]] for k in range(3))
    face_normal = torch.linalg.cross(v1 - v0, v2 - v0)
    face_normal = face_normal / face_normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    batch = torch.arange(rast.shape[0], device=rast.device).view(-1, 1, 1).expand_as(ids)[hit]
    points = torch_raster.interpolate(vertices, rast, faces)[hit]
    normals = face_normal[ids[hit] - 1]
    toward = cameras.position[batch] - points
    normals = torch.where((normals * toward).sum(-1, keepdim=True) < 0, -normals, normals)
    out = color.clone()
    out[hit] = shade(color[hit], normals, points, cameras.light, cameras.shading, batch)
    return out


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    size: int,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    supersample: int = 2,
    filtering: str = "mipmap",
    lit: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied colour [B, C, size, size] and coverage [B, size, size] in [0, 1].

    Colour comes from `texture` [C, Ht, Wt] sampled at `uvs` [V, 2] when given (trilinear mip-mapped,
    or plain bilinear), else `vertex_colors` [V, C]. With `lit`, RGB colour is shaded by the cameras'
    light and shading mode (`shade_pixels`). Rendered at `supersample`× and area-averaged so edges are
    antialiased like a volume render; composite with `image = colour + (1 − coverage) · background`.
    Differentiable with respect to the colours and the texture (not the geometry).
    """
    if filtering not in FILTERS:
        raise ValueError(f"unknown texture filtering {filtering!r}")
    res = size * supersample
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    clip = torch.einsum("bij,vj->bvi", cameras.mvp(), homo)
    rast = rasterizer_for(vertices.device)(clip, faces, (res, res))
    hit = (rast[..., 3] > 0).to(vertices.dtype)
    if uvs is not None and texture is not None:
        color = _texture_lookup(texture, clip, faces, rast, uvs, filtering)
    else:
        color = torch_raster.interpolate(vertex_colors, rast, faces)
    if lit:
        color = shade_pixels(color, vertices, faces, rast, cameras)
    color = (color * hit[..., None]).permute(0, 3, 1, 2)
    if supersample > 1:
        color = F.avg_pool2d(color, supersample)
        hit = F.avg_pool2d(hit[:, None], supersample)[:, 0]
    return color, hit

