"""Coarser levels of detail that keep their parent's UV atlas: MeshLab's texture-aware quadric edge collapse.

Each collapse weighs the UV error beside the geometric one and keeps seams consistent, so every level's
UVs lie in the charts of LOD0's atlas and all levels read one colour texture. MeshLab's Python interface
only accepts per-corner UVs together with a texture from its own file loader, so a level goes to it as an
OBJ with a material.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from backend.export.glb import png_bytes
from backend.export.libraries import load
from backend.mesh import Mesh


def keep_uv_lods(mesh: Mesh, budgets: list[int]) -> list[Mesh]:
    """`mesh` (per-vertex UVs, split along seams) simplified to each of `budgets` faces in turn, each level
    from the one before, every one with UVs in `mesh`'s atlas."""
    pymeshlab = load("pymeshlab")
    welded, inverse = np.unique(mesh.vertices, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[mesh.faces]
    corner_uvs = mesh.uvs[mesh.faces].reshape(-1, 2)
    levels = []
    with tempfile.TemporaryDirectory(prefix="latentforge-lods-") as folder:
        path = Path(folder) / "level.obj"
        for budget in budgets:
            _write_obj(path, welded, faces, corner_uvs)
            meshes = pymeshlab.MeshSet()
            meshes.load_new_mesh(str(path))
            meshes.meshing_decimation_quadric_edge_collapse_with_texture(
                targetfacenum=int(budget), qualitythr=0.3, preserveboundary=True, preservenormal=True,
                optimalplacement=False)  # vertices stay where they were, so their UVs stay exact
            level = meshes.current_mesh()
            welded, faces = level.vertex_matrix(), level.face_matrix().astype(np.int64)
            corner_uvs = level.wedge_tex_coord_matrix()
            levels.append(split_corners(welded, faces, corner_uvs))
    return levels


def split_corners(vertices: np.ndarray, faces: np.ndarray, corner_uvs: np.ndarray) -> Mesh:
    """A mesh with per-vertex UVs from per-corner ones: one vertex per distinct (position, UV) pair."""
    key = np.concatenate([faces.reshape(-1, 1).astype(np.float64), corner_uvs.astype(np.float64)], 1)
    unique, index = np.unique(key, axis=0, return_inverse=True)
    return Mesh(vertices[unique[:, 0].astype(np.int64)].astype(np.float32),
                index.reshape(-1, 3).astype(np.int64), uvs=unique[:, 1:].astype(np.float32))


def _write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, corner_uvs: np.ndarray) -> None:
    path.with_suffix(".mtl").write_text("newmtl atlas\nmap_Kd atlas.png\n")
    # MeshLab looks for the texture the material names; any image will do, only its UVs are kept
    (path.parent / "atlas.png").write_bytes(png_bytes(np.zeros((1, 1, 3), np.uint8)))
    corners = np.arange(1, 3 * len(faces) + 1).reshape(-1, 3)
    face_rows = np.stack([faces + 1, corners], -1).reshape(len(faces), 6)
    with open(path, "w") as f:
        f.write(f"mtllib {path.with_suffix('.mtl').name}\n")
        np.savetxt(f, vertices, fmt="v %.9g %.9g %.9g")
        np.savetxt(f, corner_uvs, fmt="vt %.9g %.9g")
        f.write("usemtl atlas\n")
        np.savetxt(f, face_rows, fmt="f %d/%d %d/%d %d/%d")

