"""Quad-dominant remeshing with Instant Meshes (Jakob et al. 2015, through `pyinstantmeshes`).

Instant Meshes aligns an orientation and a position field to the surface and extracts quads along them:
edge flow an artist can work with (on the toadstool and a bumpy sphere, corners within 4-6° of right angles
and over 90 % of vertices of valence 4), where pairing a decimated mesh's triangles (MeshLab's smart
pairing) makes quads whose corners are 31-39° off and whose vertices are half irregular. It writes
its quads only to a file (its array interface returns them triangulated), and it overshoots a face
target by a few percent, so the target is lowered until the budget holds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import trimesh

from backend.errors import InputError
from backend.export.libraries import load
from backend.export.polygons import Polygons

FIRST_TARGET = 0.92  # of the budget: Instant Meshes lands 3-6 % over its target
ATTEMPTS = 4


def quad_remesh(surface: trimesh.Trimesh, max_faces: int) -> tuple[np.ndarray, Polygons]:
    """Vertices [V, 3] and quad-dominant faces of `surface`, at most `max_faces` of them."""
    instant_meshes = load("pyinstantmeshes")
    target = int(max_faces * FIRST_TARGET)
    with tempfile.TemporaryDirectory(prefix="latentforge-quads-") as folder:
        source, result = Path(folder) / "surface.obj", Path(folder) / "quads.obj"
        write_obj(source, np.asarray(surface.vertices), np.asarray(surface.faces))
        for _ in range(ATTEMPTS):
            with _quiet():  # it reports every step on standard output
                instant_meshes.remesh_file(str(source), str(result), target_face_count=max(target, 8),
                                           deterministic=True)
            vertices, polygons = clean(*read_obj(result))
            if len(polygons.sizes) <= max_faces:
                return vertices, polygons.flattest_diagonals(vertices)
            target = int(target * max_faces / len(polygons.sizes) * 0.97)
    raise InputError(f"quad remeshing could not meet the budget of {max_faces:,} faces "
                     f"({len(polygons.sizes):,} after {ATTEMPTS} tries)", "ask for more faces (--faces)")


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Positions and faces only: Instant Meshes' reader refuses a face corner with an empty UV index (1//1)."""
    with open(path, "w") as f:
        np.savetxt(f, vertices, fmt="v %.9g %.9g %.9g")
        np.savetxt(f, np.asarray(faces) + 1, fmt="f %d %d %d")


def read_obj(path: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Positions and polygon faces (0-based) of an OBJ file, whatever its faces' vertex/uv/normal form."""
    vertices, faces = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                vertices.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(token.split("/")[0]) - 1 for token in line.split()[1:]])
    return np.asarray(vertices, np.float64).reshape(-1, 3), faces


def clean(vertices: np.ndarray, faces: list[list[int]]) -> tuple[np.ndarray, Polygons]:
    """Without repeated corners, faces under three corners and unreferenced vertices."""
    kept = []
    for face in faces:
        unique = [v for i, v in enumerate(face) if v != face[i - 1]]  # a triangle written as a quad
        if len(set(unique)) == len(unique) >= 3:
            kept.append(unique)
    if not kept:
        raise InputError("quad remeshing left no faces", "ask for more faces (--faces)")
    polygons = Polygons.from_lists(kept)
    used, corners = np.unique(polygons.corners, return_inverse=True)
    return vertices[used], Polygons(polygons.sizes, corners.reshape(-1).astype(np.int64))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Standard output of C++ code sent to the null device for the duration (Python's own is flushed first)."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
