"""How much of the full surface a simplified mesh keeps in its shading: grey, lit renders by the project's
rasteriser of the full surface, and of the simplified mesh with and without its tangent-space normal map,
from the same cameras, compared by PSNR.

Albedo is white, so the images hold shading alone: what a normal map can bring back of lost geometry. The
light comes from over the camera's shoulder; a quarter of it is ambient, so faces turned away still read.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from backend.cameras import Cameras
from backend.export.glb import _smooth_normals as smooth_normals
from backend.export.normal_map import tangent_frames
from backend.mesh import Mesh
from backend.render.rasterize import interpolate, rasterize
from backend.render.texture_sampling import sample_bilinear

AMBIENT = 0.25
FOV = 40.0


def views(center: np.ndarray, radius: float, count: int = 8, elevation: float = 20.0) -> tuple[Cameras, np.ndarray]:
    """`count` cameras around the sphere (`center`, `radius`) and the offset that puts `center` at the origin
    (orbit cameras look at the origin)."""
    distance = radius / math.sin(math.radians(FOV / 2)) * 1.05
    azimuths = torch.arange(count, dtype=torch.float32) * (360.0 / count)
    return Cameras.orbit(elevation, azimuths, distance, FOV), -np.asarray(center, np.float64)


def shade(mesh: Mesh, cameras: Cameras, offset: np.ndarray, size: int,
          normal_map: np.ndarray | None = None) -> np.ndarray:
    """Grey shading [B, size, size] in [0, 1] of `mesh` (moved by `offset`), 0 where it is not seen; with a
    `normal_map` [S, S, 3] uint8 (read through `mesh.uvs` in its tangent frames) the normals come from it."""
    v = torch.as_tensor(mesh.vertices + offset, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces)
    clip = torch.einsum("bij,vj->bvi", cameras.mvp(), torch.cat([v, torch.ones_like(v[:, :1])], -1))
    rast = rasterize(clip, faces, (size, size))
    hit = rast[..., 3] > 0
    if normal_map is None:
        normals = interpolate(torch.as_tensor(smooth_normals(mesh.vertices, mesh.faces), dtype=torch.float32),
                              rast, faces)
    else:
        n, t, sign = (torch.as_tensor(a, dtype=torch.float32) for a in tangent_frames(mesh))
        per_pixel = interpolate(torch.cat([n, t, sign[:, None], torch.as_tensor(mesh.uvs)], -1), rast, faces)
        n, t, s, uv = per_pixel[..., :3], per_pixel[..., 3:6], per_pixel[..., 6:7], per_pixel[..., 7:9]
        n = torch.nn.functional.normalize(n, dim=-1)
        t = torch.nn.functional.normalize(t - n * (t * n).sum(-1, keepdim=True), dim=-1)
        b = torch.linalg.cross(n, t) * torch.where(s < 0, -1.0, 1.0)
        texture = torch.tensor(normal_map, dtype=torch.float32).permute(2, 0, 1) / 255 * 2 - 1
        local = sample_bilinear(texture, uv)
        normals = local[..., :1] * t + local[..., 1:2] * b + local[..., 2:3] * n
    normals = torch.nn.functional.normalize(normals, dim=-1)
    light = cameras.position / cameras.position.norm(dim=-1, keepdim=True)
    light = torch.nn.functional.normalize(light + 0.4 * cameras.c2w[:, :3, 0] + 0.4 * cameras.c2w[:, :3, 1], dim=-1)
    lambert = (normals * light[:, None, None]).sum(-1).clamp(min=0)
    return ((AMBIENT + (1 - AMBIENT) * lambert) * hit).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of images in [0, 1]."""
    return float(10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


def shading_psnr(full: Mesh, simple: Mesh, normal_map: np.ndarray | None, size: int = 256,
                 count: int = 8) -> float:
    """PSNR of `simple`'s shading (through `normal_map` when given) against `full`'s, over `count` views."""
    lo, hi = full.vertices.min(0), full.vertices.max(0)
    cameras, offset = views((lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2, count)
    return psnr(shade(simple, cameras, offset, size, normal_map), shade(full, cameras, offset, size))
