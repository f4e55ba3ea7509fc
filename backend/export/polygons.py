"""Polygon meshes (quads, with the odd triangle or pentagon) beside the triangles every other format takes.

A polygon mesh is its vertices and, per face, its corner count (`sizes`) and its corners, flat (`corners`).
Its triangles are each face's fan from its first corner, in face order, so `owner` maps a triangle back to
its face and a triangle mesh with per-vertex UVs maps back to polygons wherever a face's triangles agree on
the copy of each corner (a UV seam across a quad's diagonal leaves that quad as its two triangles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Polygons:
    sizes: np.ndarray  # [P] corners per face (3, 4, 5 …)
    corners: np.ndarray  # [sum(sizes)] vertex indices, face after face, counter-clockwise from outside

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def quad_ratio(self) -> float:
        return float((self.sizes == 4).mean()) if len(self.sizes) else 0.0

    def triangles(self) -> tuple[np.ndarray, np.ndarray]:
        """Fan triangles [T, 3] and the face each comes from [T]."""
        owner = np.repeat(np.arange(len(self.sizes)), self.sizes - 2)
        first = np.repeat(self.starts, self.sizes - 2)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(self.sizes - 2) - (self.sizes - 2), self.sizes - 2)
        faces = np.stack([self.corners[first], self.corners[first + k + 1], self.corners[first + k + 2]], -1)
        return faces.astype(np.int64), owner

    def flattest_diagonals(self, vertices: np.ndarray) -> Polygons:
        """The same faces with each quad starting at a corner of its flatter diagonal, so that its two fan
        triangles fold least. A UV atlas cuts charts along folds; a cut along a quad's diagonal splits it."""
        quads = np.nonzero(self.sizes == 4)[0]
        starts = self.starts[quads]
        c = np.stack([self.corners[starts + i] for i in range(4)], 1)
        v = np.asarray(vertices, np.float64)

        def fold(a: np.ndarray, b: np.ndarray, d: np.ndarray, e: np.ndarray) -> np.ndarray:
            """Cosine between triangles (a, b, d) and (a, d, e)."""
            n1, n2 = np.cross(v[b] - v[a], v[d] - v[a]), np.cross(v[d] - v[a], v[e] - v[a])
            return (n1 * n2).sum(1) / np.maximum(np.linalg.norm(n1, axis=1) * np.linalg.norm(n2, axis=1), 1e-20)

        turn = fold(c[:, 1], c[:, 2], c[:, 3], c[:, 0]) > fold(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        c = np.where(turn[:, None], np.roll(c, -1, axis=1), c)
        corners = self.corners.copy()
        for i in range(4):
            corners[starts + i] = c[:, i]
        return Polygons(self.sizes, corners)

    @staticmethod
    def from_lists(faces: list[list[int]]) -> Polygons:
        sizes = np.array([len(f) for f in faces], np.int64)
        return Polygons(sizes, np.array([i for f in faces for i in f], np.int64))

    @staticmethod
    def of_triangles(faces: np.ndarray) -> Polygons:
        return Polygons(np.full(len(faces), 3, np.int64), np.asarray(faces, np.int64).reshape(-1))


def after_split(polygons: Polygons, triangles: np.ndarray, split: np.ndarray) -> Polygons:
    """The faces of `polygons` on the vertices of `split` [T, 3]: `triangles` (its fan) with each corner now
    naming a (seam-split) copy of its vertex. A face whose triangles name one copy per corner stays whole;
    any other becomes its triangles."""
    _, owner = polygons.triangles()
    original, copy = triangles.reshape(-1), np.asarray(split).reshape(-1)
    face = np.repeat(owner, 3)
    # a face is whole when each (face, original vertex) pair has one copy
    pairs = np.unique(np.stack([face, original, copy], -1), axis=0)
    per_corner = np.unique(pairs[:, :2], axis=0, return_counts=True)[1]
    broken = np.zeros(len(polygons.sizes), bool)
    broken[np.unique(pairs[:, :2], axis=0)[per_corner > 1, 0]] = True
    lookup = dict(zip(zip(face.tolist(), original.tolist(), strict=True), copy.tolist(), strict=True))
    faces: list[list[int]] = []
    starts = polygons.starts
    for i, size in enumerate(polygons.sizes.tolist()):
        if broken[i]:
            faces.extend(split[owner == i].tolist())
        else:
            faces.append([lookup[(i, v)] for v in polygons.corners[starts[i]:starts[i] + size].tolist()])
    return Polygons.from_lists(faces)
