"""Baking from a full-resolution surface onto its simplified, UV-mapped version: colours and a normal map.

Every texel of the simplified mesh's atlas is a point on that mesh; its closest point on the full
surface is where the colour field is read and whose (smooth) normal goes into the normal map, written
in the simplified mesh's tangent space (per-vertex tangents along +u, bitangents along +v, normals as the
GLB's own smooth vertex normals), the convention glTF's `normalTexture` and Blender's Normal Map node use.
"""

from __future__ import annotations

from dataclasses import dataclass

import igl
import numpy as np
import torch
import trimesh

from backend.export.glb import _smooth_normals as smooth_normals
from backend.fields import Field, evaluate
from backend.mesh import Mesh
from backend.render.atlas import fill_empty
from backend.render.rasterize import interpolate, rasterize


@dataclass
class SurfaceBake:
    texture: np.ndarray | None  # [S, S, 3] uint8 colour (None when no colour field was given)
    normal_map: np.ndarray  # [S, S, 3] uint8 tangent-space normals, (0.5, 0.5, 1) is "unchanged"


def tangent_frames(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-vertex unit normals N, tangents T (along +u, orthogonal to N) and bitangent signs [V]."""
    v, f, uv = mesh.vertices.astype(np.float64), mesh.faces, mesh.uvs.astype(np.float64)
    normals = smooth_normals(mesh.vertices, f).astype(np.float64)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    d1, d2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)
    t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det[:, None]
    b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det[:, None]
    area = np.linalg.norm(np.cross(e1, e2), axis=1, keepdims=True)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-20)

    tangents, bitangents = np.zeros_like(v), np.zeros_like(v)
    for k in range(3):
        np.add.at(tangents, f[:, k], unit(t) * area)
        np.add.at(bitangents, f[:, k], unit(b) * area)
    tangents = unit(tangents - normals * (tangents * normals).sum(-1, keepdims=True))
    sign = np.where((np.cross(normals, tangents) * bitangents).sum(-1) < 0, -1.0, 1.0)
    return normals, tangents, sign


def bake_from_surface(low: Mesh, high: trimesh.Trimesh, color_fn: Field | None, size: int,
                      device: torch.device | str = "cpu") -> SurfaceBake:
    """Colour and tangent-space normal map of `high` (the full-resolution surface) on `low`'s UV atlas
    (the normal map only, without `color_fn`: a level of detail that reads another level's colours)."""
    uv = torch.as_tensor(low.uvs, dtype=torch.float32, device=device)
    faces = torch.as_tensor(low.faces, device=device)
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)
    rast = rasterize(clip, faces, (size, size))
    covered = (rast[0, ..., 3] > 0).cpu().numpy()
    normals, tangents, sign = tangent_frames(low)
    attrs = np.concatenate([low.vertices, normals, tangents, sign[:, None]], -1).astype(np.float32)
    per_texel = interpolate(torch.as_tensor(attrs, device=device), rast, faces)[0].cpu().numpy()[covered]
    points, n_low, t_low, s_low = (per_texel[:, :3], per_texel[:, 3:6], per_texel[:, 6:9], per_texel[:, 9])

    hv, hf = np.asarray(high.vertices, np.float64), np.asarray(high.faces, np.int64)
    _, face, closest = igl.point_mesh_squared_distance(points.astype(np.float64), hv, hf)
    bary = _barycentrics(closest, hv[hf[face]])
    n_high = (bary[..., None] * np.asarray(high.vertex_normals)[hf[face]]).sum(1)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    n_high, n_low = unit(n_high), unit(n_low)
    t_low = unit(t_low - n_low * (t_low * n_low).sum(-1, keepdims=True))
    b_low = np.cross(n_low, t_low) * np.where(s_low < 0, -1.0, 1.0)[:, None]
    local = np.stack([(n_high * t_low).sum(-1), (n_high * b_low).sum(-1), (n_high * n_low).sum(-1)], -1)
    normal_map = np.zeros((size, size, 3), np.uint8)
    normal_map[covered] = np.round((unit(local) * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)

    if color_fn is None:
        return SurfaceBake(None, fill_empty(normal_map, covered))
    texture = np.zeros((size, size, 3), np.uint8)
    colors = evaluate(color_fn, torch.as_tensor(closest, dtype=torch.float32, device=device), channels=3)
    texture[covered] = (colors.nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return SurfaceBake(fill_empty(texture, covered), fill_empty(normal_map, covered))


def _barycentrics(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric coordinates [N, 3] of points [N, 3] in triangles [N, 3, 3] (points lie on them)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    denom = np.where(np.abs(d00 * d11 - d01 * d01) < 1e-30, 1e-30, d00 * d11 - d01 * d01)
    w1 = (d11 * d20 - d01 * d21) / denom
    w2 = (d00 * d21 - d01 * d20) / denom
    return np.clip(np.stack([1 - w1 - w2, w1, w2], -1), 0, 1)
