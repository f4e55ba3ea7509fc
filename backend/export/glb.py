"""Encoding textured meshes as GLB and textures as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from backend.export.files import write_atomically
from backend.mesh import Mesh, to_file_frame, validate_mesh


def write_glb(mesh: Mesh, texture: np.ndarray, path: Path) -> None:
    """Write `mesh` (internal z-up frame, per-vertex UVs) with `texture` [H, W, 3] uint8 embedded."""
    write_atomically({Path(path): glb_bytes(mesh, texture)})


def glb_bytes(mesh: Mesh, texture: np.ndarray, normal_map: np.ndarray | None = None) -> bytes:
    """The GLB file of `mesh` with `texture` as its base colour, in glTF's y-up frame, and optionally a
    tangent-space `normal_map` [H, W, 3] uint8 as the material's normal texture."""
    mesh = validate_mesh(mesh, "exported mesh")
    if mesh.uvs is None:
        raise ValueError("a textured GLB needs per-vertex UVs")
    image = Image.fromarray(_rgb8(texture))
    # glTF's default is fully metallic, which renders a baked albedo almost black
    normals = None if normal_map is None else Image.fromarray(_rgb8(normal_map))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, normalTexture=normals,
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    tm = trimesh.Trimesh(to_file_frame(mesh.vertices), mesh.faces,
                         vertex_normals=to_file_frame(_smooth_normals(mesh.vertices, mesh.faces)),
                         visual=trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material), process=False)
    return tm.export(file_type="glb", include_normals=True)


def png_bytes(texture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_rgb8(texture)).save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb8(texture: np.ndarray) -> np.ndarray:
    texture = np.asarray(texture)
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(f"a texture must be [H, W, 3] uint8, got {texture.shape} {texture.dtype}")
    return texture


def _smooth_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals computed on the welded surface, so UV seams do not show as creases."""
    welded, inverse = np.unique(vertices, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return np.asarray(trimesh.Trimesh(welded, inverse[faces], process=False).vertex_normals)[inverse]
