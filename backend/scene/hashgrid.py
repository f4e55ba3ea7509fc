"""Multi-resolution hash-grid encoding (Instant-NGP), in plain PyTorch so it runs on any device.

The encoding is computed level by level and corner by corner over bounded chunks of points, so its
temporaries are a few [chunk] vectors however many points a call has: each corner's table row is gathered,
weighted and added in place. Coarse levels whose (res+1)³ nodes fit the table are indexed densely (int32,
no collisions); finer ones are hashed, with each axis' term masked to the table size before the XOR (the
mask distributes over XOR), so the indices fit int32 too. Nothing is saved for backward but the points:
the backward recomputes each corner's index and weight and scatters into the table's gradient with
`index_add_`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

PRIMES = (1, 2654435761, 805459861)
CHUNK = 1 << 16  # points per pass: every temporary is a few vectors of this length


@dataclass(frozen=True)
class Level:
    resolution: int
    dense: bool
    offset: int  # first row of this level in the table
    size: int  # rows

    def axis_terms(self, base: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per axis, the index term of the voxel's lower and upper corner (int32, [N] each).

        A corner's index is the sum (dense) or the XOR (hashed) of its three axis terms.
        """
        terms = []
        if self.dense:
            stride = 1
            for axis in range(3):
                lo = base[:, axis] * stride
                terms.append((lo, lo + stride))
                stride *= self.resolution + 1
            return terms
        mask = self.size - 1  # hashed levels fill the table, a power of two
        for axis, prime in enumerate(PRIMES):
            b = base[:, axis].long()  # the product needs 64 bits before masking
            terms.append(((b * prime & mask).int(), ((b + 1) * prime & mask).int()))
        return terms

    def corners(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """For points x [N, 3] in [0, 1]: the 8 corners' row indices and weights (z fastest), and frac [N, 3].

        The lower corner is kept at most res − 1: at pos = res the upper corner then has weight 1, as the
        lower one would have had with frac 0, so values and table gradients are those of floor(pos).
        """
        pos = x * self.resolution
        base = pos.floor().clamp_(max=self.resolution - 1)
        frac = pos - base
        (x0, x1), (y0, y1), (z0, z1) = self.axis_terms(base.int())
        combine = torch.add if self.dense else torch.bitwise_xor
        wx, wy, wz = (1 - frac[:, 0], frac[:, 0]), (1 - frac[:, 1], frac[:, 1]), (1 - frac[:, 2], frac[:, 2])
        index, weight = [], []
        for ix, wxi in ((x0, wx[0]), (x1, wx[1])):
            for iy, wyi in ((y0, wy[0]), (y1, wy[1])):
                ixy, wxy = combine(ix, iy), wxi * wyi
                for iz, wzi in ((z0, wz[0]), (z1, wz[1])):
                    index.append(combine(ixy, iz))
                    weight.append(wxy * wzi)
        return index, weight, frac


def _encode(x: torch.Tensor, table: torch.Tensor, levels: tuple[Level, ...]) -> torch.Tensor:
    out = x.new_empty(x.shape[0], len(levels), table.shape[1], dtype=table.dtype)
    for lo in range(0, x.shape[0], CHUNK):
        xs, os = x[lo:lo + CHUNK], out[lo:lo + CHUNK]
        for n, level in enumerate(levels):
            rows = table[level.offset:level.offset + level.size]
            index, weight, _ = level.corners(xs)
            acc = os[:, n]
            torch.mul(rows.index_select(0, index[0]), weight[0][:, None].to(table.dtype), out=acc)
            for i, w in zip(index[1:], weight[1:], strict=True):
                acc.addcmul_(rows.index_select(0, i), w[:, None].to(table.dtype))
    return out.view(x.shape[0], -1)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, levels: tuple[Level, ...]) -> torch.Tensor:  # noqa: ANN001
        ctx.levels = levels
        ctx.save_for_backward(x, table)
        return _encode(x.clamp(0, 1), table, levels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # noqa: ANN001
        x, table = ctx.saved_tensors
        levels: tuple[Level, ...] = ctx.levels
        grad = grad.view(x.shape[0], len(levels), table.shape[1])
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        for lo in range(0, x.shape[0], CHUNK):
            xs, gs = x[lo:lo + CHUNK].clamp(0, 1), grad[lo:lo + CHUNK]
            for n, level in enumerate(levels):
                rows = slice(level.offset, level.offset + level.size)
                index, weight, frac = level.corners(xs)
                g = gs[:, n]
                if grad_table is not None:
                    for i, w in zip(index, weight, strict=True):
                        grad_table[rows].index_add_(0, i, g * w[:, None].to(g.dtype))
                if grad_x is not None:
                    _add_position_grad(grad_x[lo:lo + CHUNK], g, table[rows], index, frac, level.resolution)
        if grad_x is not None:
            grad_x *= (x >= 0) & (x <= 1)  # clamp's gradient
        return grad_x, grad_table, None


def _add_position_grad(out: torch.Tensor, g: torch.Tensor, rows: torch.Tensor, index: list[torch.Tensor],
                       frac: torch.Tensor, resolution: int) -> None:
    """out += ∂(g · encoding)/∂x for one level: each corner's ⟨g, feature⟩ times ∂weight/∂frac, times res."""
    factors = [(1 - frac[:, a], frac[:, a]) for a in range(3)]
    for corner, i in enumerate(index):
        bits = (corner >> 2 & 1, corner >> 1 & 1, corner & 1)
        s = (rows.index_select(0, i) * g).sum(-1).to(out.dtype) * resolution
        for a in range(3):
            b, c = [factors[k][bits[k]] for k in range(3) if k != a]
            out[:, a] += s * b * c * (1 if bits[a] else -1)


class HashGrid(nn.Module):
    """Trilinearly interpolated features from `levels` grids of geometrically growing resolution.

    Coarse levels small enough to fit the table are indexed densely (no collisions); finer ones are
    hashed into a table of 2**log2_table_size entries.
    """

    def __init__(
        self,
        levels: int = 16,
        features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
    ) -> None:
        super().__init__()
        self.features = features
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        table = 2**log2_table_size
        specs, offset = [], 0
        for level in range(levels):
            res = int(math.floor(base_resolution * growth**level))
            dense = (res + 1) ** 3 <= table
            size = (res + 1) ** 3 if dense else table
            specs.append(Level(res, dense, offset, size))
            offset += size
        self.level_specs = tuple(specs)
        self.levels = levels
        self.embeddings = nn.Parameter(torch.empty(offset, features).uniform_(-1e-4, 1e-4))
        self.output_dim = levels * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3] in [0, 1] (clamped) → [N, levels · features]."""
        return _Encode.apply(x, self.embeddings, self.level_specs)
