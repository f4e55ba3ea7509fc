"""Differentiable marching tetrahedra on a regular cube grid split into tetrahedra.

Each cube of an R³ grid is cut into six tetrahedra around its main diagonal (Kuhn's subdivision: every
cube uses the same diagonal, so neighbouring tetrahedra share whole faces and the surface has no
cracks). Where the SDF changes sign along a tetrahedron edge (a, b), the surface vertex is the zero of
the linear interpolant, p = (v_a·s_b − v_b·s_a)/(s_b − s_a): differentiable with respect to both the SDF
values s and the (deformed) grid positions v. Surface vertices are made once per grid edge, so the
triangles of neighbouring tetrahedra share them and a closed level set gives a watertight mesh.
Convention: s < 0 inside. Triangles wind counter-clockwise seen from outside (normals point outwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# corners of a cube as bit patterns x + 2y + 4z; the six tetrahedra around the diagonal 0 → 7
_CUBE_TETS = ((0, 1, 3, 7), (0, 1, 5, 7), (0, 2, 3, 7), (0, 2, 6, 7), (0, 4, 5, 7), (0, 4, 6, 7))
_TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _edge_of(i: int, j: int) -> int:
    return _TET_EDGES.index((min(i, j), max(i, j)))


def _case_table() -> torch.Tensor:
    """[16, 2, 3] local edge indices of up to two triangles per inside-pattern (−1: no triangle).

    Winding is fixed afterwards from the geometry, so the table only has to say which edges meet.
    """
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    for case in range(16):
        inside = [k for k in range(4) if case >> k & 1]
        outside = [k for k in range(4) if not case >> k & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[case, 0] = torch.tensor([_edge_of(lone, o) for o in others])
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # the quad ac → ad → bd → bc, as two triangles
            ac, ad, bd, bc = _edge_of(a, c), _edge_of(a, d), _edge_of(b, d), _edge_of(b, c)
            table[case, 0] = torch.tensor([ac, ad, bd])
            table[case, 1] = torch.tensor([ac, bd, bc])
    return table


_CASES = _case_table()


@dataclass
class TetGrid:
    """A regular grid of `resolution`³ cubes over [−bound, bound]³, each cut into six tetrahedra."""

    vertices: torch.Tensor  # [V, 3] float32
    tets: torch.Tensor  # [T, 4] int32 vertex indices
    edges: torch.Tensor  # [E, 2] int32 unique vertex pairs (low, high)
    tet_edges: torch.Tensor  # [T, 6] int32 index into `edges` of each tetrahedron's edge, in _TET_EDGES order
    resolution: int
    bound: float

    @property
    def cell(self) -> float:
        return 2 * self.bound / self.resolution

    @staticmethod
    def build(resolution: int, bound: float = 1.0, device: torch.device | str = "cpu") -> TetGrid:
        r = int(resolution)
        n = r + 1
        axis = torch.linspace(-bound, bound, n)
        vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        i, j, k = torch.meshgrid(torch.arange(r), torch.arange(r), torch.arange(r), indexing="ij")
        base = (i * n * n + j * n + k).reshape(-1)
        corner = torch.tensor([(c & 1) * n * n + (c >> 1 & 1) * n + (c >> 2 & 1) for c in range(8)])
        cube = base[:, None] + corner[None]  # [C, 8] vertex index of each corner
        tets = cube[:, torch.tensor(_CUBE_TETS)].reshape(-1, 4)
        pairs = tets[:, torch.tensor(_TET_EDGES)]  # [T, 6, 2]
        pairs = torch.sort(pairs, -1).values.reshape(-1, 2)
        key = pairs[:, 0] * len(vertices) + pairs[:, 1]
        unique, inverse = torch.unique(key, return_inverse=True)
        edges = torch.stack([unique // len(vertices), unique % len(vertices)], -1)
        return TetGrid(vertices.to(device), tets.int().to(device), edges.int().to(device),
                       inverse.view(-1, 6).int().to(device), r, float(bound))

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.vertices, self.tets, self.edges, self.tet_edges))


def marching_tets(grid: TetGrid, vertices: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero level set of `sdf` [V] on the tetrahedra of `grid` with vertex positions `vertices` [V, 3].

    Returns surface vertices [N, 3] (differentiable with respect to `vertices` and `sdf`) and triangles
    [F, 3] (long). Both are empty when the SDF has no sign change.
    """
    inside = sdf < 0
    a, b = grid.edges[:, 0].long(), grid.edges[:, 1].long()
    crossing = inside[a] != inside[b]
    # a compact index of the crossing edges: the surface vertex each one makes
    slot = torch.cumsum(crossing.long(), 0) - 1
    ca, cb = a[crossing], b[crossing]
    sa, sb = sdf[ca][:, None], sdf[cb][:, None]
    denom = sb - sa  # never zero: the signs differ
    points = (vertices[ca] * sb - vertices[cb] * sa) / denom

    bits = inside[grid.tets.long()].long() * torch.tensor([1, 2, 4, 8], device=sdf.device)
    case = bits.sum(-1)
    active = (case > 0) & (case < 15)
    case, tet_edges = case[active], grid.tet_edges[active].long()
    local = _CASES.to(sdf.device)[case]  # [A, 2, 3]
    valid = local[..., 0] >= 0  # [A, 2]
    owner = torch.arange(len(case), device=sdf.device)[:, None].expand(-1, 2)[valid]
    local = local[valid]  # [F, 3]
    faces = slot[tet_edges[owner[:, None], local]]  # [F, 3]
    faces = _wind_outwards(faces, points, grid, owner, active, inside, vertices)
    return points, faces


def _wind_outwards(faces: torch.Tensor, points: torch.Tensor, grid: TetGrid, owner: torch.Tensor,
                   active: torch.Tensor, inside: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Swap two corners of each triangle whose normal points into its tetrahedron's inside part."""
    with torch.no_grad():
        tet = grid.tets[active].long()[owner]  # [F, 4]
        pos = vertices.detach()[tet]  # [F, 4, 3]
        ins = inside[tet].float()[..., None]
        into = (pos * ins).sum(1) / ins.sum(1) - (pos * (1 - ins)).sum(1) / (1 - ins).sum(1)
        p = points.detach()[faces]
        normal = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        flip = (normal * into).sum(-1) > 0
        return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
