"""Known-answer shapes and metrics shared by the quality tests."""

from __future__ import annotations

import numpy as np
import trimesh

from backend.mesh import Mesh

RED = np.array([0.85, 0.12, 0.10], np.float32)
BLUE = np.array([0.12, 0.25, 0.85], np.float32)
WHITE = np.array([1.0, 1.0, 1.0], np.float32)  # TargetGuidance's fixed background


def two_tone_box(extents=(1.6, 1.0, 1.2), center=(2.0, -1.0, 0.5), lower=BLUE) -> Mesh:
    """A box off the origin: red above its middle, `lower` (blue) below (faces split so colours stay crisp)."""
    box = trimesh.creation.box(extents).subdivide().subdivide()
    v = np.asarray(box.vertices, np.float32)[np.asarray(box.faces)].reshape(-1, 3)
    faces = np.arange(len(v)).reshape(-1, 3)
    upper = v.reshape(-1, 3, 3).mean(1)[:, 2] > 0
    colors = np.repeat(np.where(upper[:, None], RED, np.asarray(lower, np.float32)), 3, axis=0).astype(np.float32)
    return Mesh(v + np.asarray(center, np.float32), faces, vertex_colors=colors)


def voxel_sets(meshes: list[Mesh], resolution: int = 64) -> list[np.ndarray]:
    """Filled voxelisations of closed meshes, sampled on one grid over all of them."""
    lo = np.min([m.vertices.min(0) for m in meshes], axis=0)
    hi = np.max([m.vertices.max(0) for m in meshes], axis=0)
    pitch = float((hi - lo).max()) / resolution
    axes = [np.arange(lo[k], hi[k] + pitch, pitch) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def filled(m: Mesh) -> np.ndarray:
        vox = trimesh.Trimesh(m.vertices, m.faces, process=False).voxelized(pitch / 2).fill()
        return vox.is_filled(grid)

    return [filled(m) for m in meshes]


def set_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def voxel_iou(a: Mesh, b: Mesh, resolution: int = 64) -> float:
    """Volume IoU of two closed meshes: filled voxelisations sampled on one grid over both."""
    return set_iou(*voxel_sets([a, b], resolution))


def two_tone_colour_rmse(mesh: Mesh, texture: np.ndarray, seam_z: float = 0.5, margin: float = 0.15) -> float:
    """RMSE of a two_tone_box's baked texture at each vertex's UV, away from the red/blue seam."""
    z = mesh.vertices[:, 2]
    away = np.abs(z - seam_z) > margin  # colours are undefined right at the seam
    expected = np.where((z > seam_z)[:, None], RED, BLUE)[away]
    h, w, _ = texture.shape
    uv = mesh.uvs[away]
    rows = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    got = texture[rows, cols].astype(np.float32) / 255.0
    return float(np.sqrt(((got - expected) ** 2).mean()))
