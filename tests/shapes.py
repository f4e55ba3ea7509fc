"""Known-answer shapes and metrics shared by the quality tests."""

from __future__ import annotations

import numpy as np
import trimesh

from backend.mesh import Mesh
from backend.surface_error import set_iou, voxel_iou, voxel_sets  # noqa: F401 - the tests' shared metrics

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


def surface_psnr(mesh: Mesh, texture: np.ndarray, face_colors: np.ndarray, faces: np.ndarray | None = None) -> float:
    """PSNR (dB) of a painted texture against each face's known colour [F, 3], over every face (or `faces`).

    Each face is read at its centroid and halfway from it to each corner, so a face is judged over its
    area, not at one texel.
    """
    faces = np.arange(len(mesh.faces)) if faces is None else np.asarray(faces)
    corners = mesh.uvs[mesh.faces[faces]]  # [F, 3, 2]
    centroid = corners.mean(1, keepdims=True)
    points = np.concatenate([centroid, (centroid + corners) / 2], 1)  # [F, 4, 2]
    h, w, _ = texture.shape
    rows = np.clip(((1 - points[..., 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((points[..., 0] * w).astype(int), 0, w - 1)
    got = texture[rows, cols].astype(np.float32) / 255.0  # [F, 4, 3]
    mse = float(((got - face_colors[faces][:, None]) ** 2).mean())
    return 10 * np.log10(1 / max(mse, 1e-12))


def face_texels(mesh: Mesh, size: int, faces: np.ndarray, erode: int = 2) -> np.ndarray:
    """[size, size] bool: the atlas texels `faces` cover, `erode` texels in from their charts' edges."""
    import torch
    from scipy.ndimage import binary_erosion

    from backend.render.atlas import atlas_raster

    raster = atlas_raster(torch.as_tensor(mesh.uvs), torch.as_tensor(mesh.faces), size)
    ids = raster[0, ..., 3].long().numpy() - 1
    inside = np.isin(ids, faces) & (ids >= 0)
    return binary_erosion(inside, iterations=erode) if erode else inside


def notched_block(center=(1.5, 0.5, -1.0), size=1.6) -> Mesh:
    """An L-shaped block off the origin (a concave notch cut from one corner): red above its middle, blue below.

    Built by marching cubes of the block's voxel indicator, so it is one closed, consistently wound surface.
    """
    from skimage.measure import marching_cubes

    n = 48
    axis = np.linspace(-0.6, 0.6, n)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    h = 0.5
    block = (np.abs(x) < h) & (np.abs(y) < h * 0.6) & (np.abs(z) < h)
    notch = (x > 0.0) & (z > 0.0)  # the upper right quarter is cut away
    grid = (block & ~notch).astype(np.float32)
    verts, faces, _, _ = marching_cubes(grid, 0.5, spacing=(axis[1] - axis[0],) * 3, gradient_direction="ascent")
    verts = (verts - 0.6) * size
    upper = verts[:, 2] > 0
    colors = np.where(upper[:, None], RED, BLUE).astype(np.float32)
    return Mesh((verts + np.asarray(center)).astype(np.float32), faces.astype(np.int64), vertex_colors=colors)



def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """A union of two signed distances whose surface blends over a width of about `k` (no crease)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1 - h)


def _sdf_mesh(sdf, half: float, center, n: int = 72) -> Mesh:
    """Marching cubes of a smooth signed distance over [−half, half]³: one closed surface, red above z = 0 and
    blue below, moved to `center`."""
    from skimage.measure import marching_cubes

    axis = np.linspace(-half, half, n)
    grid = sdf(*np.meshgrid(axis, axis, axis, indexing="ij")).astype(np.float32)
    verts, faces, _, _ = marching_cubes(grid, 0.0, spacing=(axis[1] - axis[0],) * 3, gradient_direction="descent")
    verts = verts - half
    colors = np.where((verts[:, 2] > 0)[:, None], RED, BLUE).astype(np.float32)
    return Mesh((verts + np.asarray(center)).astype(np.float32), faces.astype(np.int64), vertex_colors=colors)


def gourd(center=(-0.8, 1.2, 0.4)) -> Mesh:
    """Two spheres of different sizes blended into one smooth surface with a waist (convex and saddle-shaped
    regions), off the origin."""
    def sdf(x, y, z):
        low = np.sqrt(x**2 + y**2 + (z + 0.22) ** 2) - 0.42
        high = np.sqrt(x**2 + y**2 + (z - 0.33) ** 2) - 0.27
        return _smooth_min(low, high, 0.2)

    return _sdf_mesh(sdf, 0.7, center)


def dumbbell(center=(1.0, 0.6, -0.5)) -> Mesh:
    """Two balls on a thin rod (a third of their radius), smoothly blended, lying along x, off the origin."""
    def sdf(x, y, z):
        balls = np.sqrt((np.abs(x) - 0.52) ** 2 + y**2 + z**2) - 0.3
        rod = np.maximum(np.sqrt(y**2 + z**2) - 0.1, np.abs(x) - 0.6)
        return _smooth_min(balls, rod, 0.06)

    return _sdf_mesh(sdf, 0.9, center)


def write_linear_coloured_glb(path, vertices: np.ndarray, faces: np.ndarray, linear: np.ndarray) -> None:
    """A GLB whose `COLOR_0` holds `linear` [V, 3] as 32-bit floats (trimesh would write 8-bit levels), as
    Blender's exporter writes colour attributes. Vertices are written as given (glTF's y-up frame)."""
    import json
    import struct

    blobs = [np.asarray(faces, np.uint32).tobytes(), np.asarray(vertices, np.float32).tobytes(),
             np.asarray(linear, np.float32).tobytes()]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    views = [{"buffer": 0, "byteOffset": int(o), "byteLength": len(b)} for o, b in zip(offsets, blobs, strict=False)]
    v = np.asarray(vertices, np.float32)
    accessors = [{"bufferView": 0, "componentType": 5125, "count": int(np.size(faces)), "type": "SCALAR"},
                 {"bufferView": 1, "componentType": 5126, "count": len(v), "type": "VEC3",
                  "min": v.min(0).tolist(), "max": v.max(0).tolist()},
                 {"bufferView": 2, "componentType": 5126, "count": len(v), "type": "VEC3"}]
    gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "COLOR_0": 2}, "indices": 0, "mode": 4}]}],
            "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": int(offsets[-1])}]}
    head = json.dumps(gltf).encode()
    head += b" " * (-len(head) % 4)
    body = b"".join(blobs)
    body += b"\0" * (-len(body) % 4)
    chunks = struct.pack("<I4s", len(head), b"JSON") + head + struct.pack("<I4s", len(body), b"BIN\0") + body
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)
