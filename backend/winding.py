"""Inside/outside and distance queries against a triangle soup, in torch.

The generalised winding number (Jacobson et al. 2013) sums each triangle's signed solid angle seen from
a point: ≈ 1 inside a closed mesh, ≈ 0 outside, and it degrades gracefully for overlapping, open or
self-intersecting primitives, which is what an artist's blockout is.
"""

from __future__ import annotations

import math

import torch

_CHUNK_PAIRS = 1 << 23  # point × triangle pairs per chunk


def _chunks(n_points: int, n_tris: int) -> int:
    return max(1, _CHUNK_PAIRS // max(n_tris, 1))


def winding_number(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Winding numbers [N] of points [N, 3] with respect to triangles `vertices[faces]`."""
    tri = vertices[faces.long()]  # [F, 3, 3]
    out = []
    step = _chunks(len(points), len(tri))
    for i in range(0, len(points), step):
        p = points[i : i + step]
        a, b, c = (tri[None, :, k] - p[:, None] for k in range(3))  # [n, F, 3]
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c)).sum(-1)
        denom = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append((2 * torch.atan2(det, denom)).sum(-1) / (4 * math.pi))
    return torch.cat(out)


def distance_to_triangles(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unsigned distance [N] from points [N, 3] to the nearest triangle (exact point–triangle distance)."""
    tri = vertices[faces.long()]
    a0, b0, c0 = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac = b0 - a0, c0 - a0
    out = []
    step = _chunks(len(points), len(tri))
    for i in range(0, len(points), step):
        p = points[i : i + step][:, None]  # [n, 1, 3]
        ap = p - a0
        # project onto the plane in barycentric terms, then clamp onto the triangle (Ericson's method
        # in closed form: the nearest point is on the face, or on one of the three edges)
        d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
        d20, d21 = (ap * ab).sum(-1), (ap * ac).sum(-1)
        den = (d00 * d11 - d01 * d01).clamp(min=1e-20)
        v = (d11 * d20 - d01 * d21) / den
        w = (d00 * d21 - d01 * d20) / den
        inside = (v >= 0) & (w >= 0) & (v + w <= 1)
        face_pt = a0 + v[..., None] * ab + w[..., None] * ac
        best = torch.where(inside, (p - face_pt).norm(dim=-1), torch.full_like(v, float("inf")))
        for s, e in ((a0, b0), (b0, c0), (c0, a0)):
            se = e - s
            t = (((p - s) * se).sum(-1) / (se * se).sum(-1).clamp(min=1e-20)).clamp(0, 1)
            best = torch.minimum(best, (p - (s + t[..., None] * se)).norm(dim=-1))
        out.append(best.min(-1).values)
    return torch.cat(out)
