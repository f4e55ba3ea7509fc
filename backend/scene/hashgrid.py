"""Multi-resolution hash-grid encoding (Instant-NGP), in plain PyTorch so it runs on any device.

The encoding is computed level by level and corner by corner over bounded chunks of points, so its
temporaries are a few [chunk] vectors however many points a call has: each corner's table row is gathered,
weighted and added in place. Coarse levels whose (res+1)³ nodes fit the table are indexed densely (int32,
no collisions); finer ones are hashed, with each axis' term masked to the table size before the XOR (the
mask distributes over XOR), so the indices fit int32 too. Nothing is saved for backward but the points:
the backward recomputes each corner's index and weight and scatters into the table's gradient with
`scatter_add_`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

PRIMES = (1, 2654435761, 805459861)
CHUNK = 1 << 14  # points per pass on a CPU: temporaries stay a few MB (in cache) however large the call
CUDA_CHUNK = 1 << 18  # on CUDA fewer, larger passes: each operation is a kernel launch


def chunk_size(x: torch.Tensor) -> int:
    """Points per pass: one pass when compiled (the compiler fuses the operations, not a Python loop)."""
    if torch.compiler.is_compiling():
        return max(x.shape[0], 1)
    return CUDA_CHUNK if x.is_cuda else CHUNK


@dataclass(frozen=True)
class Level:
    resolution: int
    dense: bool
    offset: int  # first row of this level in the table
    size: int  # rows

    def corners(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For points x [3, N] (axis-major) in [0, 1]: the voxel corners' row indices [8, N] (int32) and
        weights [8, N], corners ordered (x, y, z) with z fastest, and each axis' (1 − frac, frac) [3, 2, N].

        Points run along the last, contiguous axis of every tensor, so each operation is one long
        vectorised loop. The lower corner is kept at most res − 1: at pos = res the upper corner then has
        weight 1, as the lower one would have had with frac 0, so values and table gradients are those of
        floor(pos).
        """
        pos = x * self.resolution
        base = pos.floor().clamp_(max=self.resolution - 1)
        frac = pos - base
        if self.dense:  # index = x + (res+1)·y + (res+1)²·z, each axis' term exact in int32
            r1 = self.resolution + 1
            stride = torch.tensor([[1], [r1], [r1 * r1]], dtype=torch.int32, device=x.device)
            lo = base.int() * stride
            terms = torch.stack([lo, lo + stride], 1)  # [3, 2, N]
            index = terms[0, :, None, None] + terms[1, None, :, None] + terms[2, None, None, :]
        else:  # (x·p₀ ⊕ y·p₁ ⊕ z·p₂) mod 2^k, the mask taken per axis (it distributes over ⊕)
            primes = torch.tensor(PRIMES, dtype=torch.int64, device=x.device)[:, None]
            b = base.long()  # the products need 64 bits before masking
            terms = torch.stack([b * primes, (b + 1) * primes], 1).bitwise_and_(self.size - 1).int()
            index = terms[0, :, None, None] ^ terms[1, None, :, None] ^ terms[2, None, None, :]
        factors = torch.stack([1 - frac, frac], 1)  # [3, 2, N]
        weight = factors[0, :, None, None] * factors[1, None, :, None] * factors[2, None, None, :]
        return index.view(8, -1), weight.view(8, -1), factors


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index] as [F, *index.shape] (feature-major) for a contiguous [R, F] table: rows of 8 bytes
    are moved as single int64s, which CPU index_select does several times faster than short 2-D rows."""
    flat = index.reshape(-1)
    differentiable = torch.is_grad_enabled() and rows.requires_grad
    if rows.shape[1] * rows.element_size() == 8 and not differentiable and not torch.compiler.is_compiling():
        out = rows.view(torch.int64).view(-1).index_select(0, flat).view(rows.dtype)
    else:
        out = rows.index_select(0, flat)
    return out.view(*index.shape, rows.shape[1]).movedim(-1, 0)


def _encode(x: torch.Tensor, table: torch.Tensor, levels: tuple[Level, ...]) -> torch.Tensor:
    """[N, L·F] as a transposed view of a feature-major [L·F, N] block, which Linear layers take as it is."""
    features = table.shape[1]
    out = x.new_empty(len(levels), features, x.shape[0], dtype=table.dtype)
    chunk = chunk_size(x)
    for lo in range(0, x.shape[0], chunk):
        xs = x[lo:lo + chunk].t().contiguous()
        for n, level in enumerate(levels):
            index, weight, _ = level.corners(xs)
            feats = _gather(table[level.offset:level.offset + level.size], index)  # [F, 8, C]
            out[n, :, lo:lo + chunk] = (feats * weight.to(table.dtype)).sum(1)
    return out.view(len(levels) * features, x.shape[0]).t()


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
        features = table.shape[1]
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        within = torch.arange(features, dtype=torch.int32, device=x.device)[:, None, None]
        chunk = chunk_size(x)
        for lo in range(0, x.shape[0], chunk):
            xs = x[lo:lo + chunk].clamp(0, 1).t().contiguous()
            gs = grad[lo:lo + chunk].t().contiguous().view(len(levels), features, -1)  # [L, F, C]
            for n, level in enumerate(levels):
                rows = slice(level.offset, level.offset + level.size)
                index, weight, factors = level.corners(xs)
                g = gs[n]  # [F, C]
                if grad_table is not None:
                    # one scatter per level into the flat table, of 1-D elements with int64 indices:
                    # on a CPU that runs 4× faster than index_add_ with int32 ones (and 2-D rows go one
                    # tensor operation at a time)
                    flat_index = (index * features + within).view(-1).long()  # [F · 8 · C]
                    grad_table[rows].view(-1).scatter_add_(0, flat_index, (weight.to(g.dtype) * g[:, None]).view(-1))
                if grad_x is not None:
                    grad_x[lo:lo + chunk] += _position_grad(g, _gather(table[rows], index), factors,
                                                            level.resolution).t()
        if grad_x is not None:
            grad_x *= (x >= 0) & (x <= 1)  # clamp's gradient
        return grad_x, grad_table, None


def _position_grad(g: torch.Tensor, feats: torch.Tensor, factors: torch.Tensor, resolution: int) -> torch.Tensor:
    """∂⟨g, level encoding⟩/∂x [3, C]: each corner's ⟨g, feature⟩ times ∂weight/∂frac, times res."""
    s = (feats * g[:, None]).sum(0).view(2, 2, 2, -1).to(factors.dtype)
    fx, fy, fz = factors[0], factors[1], factors[2]
    dx = ((s[1] - s[0]) * fy[:, None] * fz[None]).sum((0, 1))
    dy = ((s[:, 1] - s[:, 0]) * fx[:, None] * fz[None]).sum((0, 1))
    dz = ((s[:, :, 1] - s[:, :, 0]) * fx[:, None] * fy[None]).sum((0, 1))
    return torch.stack([dx, dy, dz]) * resolution


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
        if torch.compiler.is_compiling():  # the same operations, differentiated by autograd: the compiler fuses them
            return _encode(x.clamp(0, 1), self.embeddings, self.level_specs)
        return _Encode.apply(x, self.embeddings, self.level_specs)
