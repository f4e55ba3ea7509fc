"""Multi-resolution hash-grid encoding (Instant-NGP), in plain PyTorch so it runs on any device."""

from __future__ import annotations

import math

import torch
from torch import nn

_PRIMES = (1, 2654435761, 805459861)
# the 8 corners of a voxel as (dx, dy, dz) offsets
_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.long)


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
        self.levels, self.features = levels, features
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        table = 2**log2_table_size
        resolutions, sizes = [], []
        for level in range(levels):
            res = int(math.floor(base_resolution * growth**level))
            resolutions.append(res)
            sizes.append(min(table, (res + 1) ** 3))
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor([(r + 1) ** 3 <= table for r in resolutions]),
                             persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        offsets = torch.tensor([0] + sizes).cumsum(0)
        self.register_buffer("offsets", offsets[:-1], persistent=False)
        self.register_buffer("corners", _CORNERS.clone(), persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.long), persistent=False)
        self.embeddings = nn.Parameter(torch.empty(int(offsets[-1]), features).uniform_(-1e-4, 1e-4))
        self.output_dim = levels * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3] in [0, 1] → [N, levels · features]."""
        n = x.shape[0]
        pos = x.clamp(0, 1)[:, None, :] * self.resolutions[None, :, None].to(x.dtype)  # [N, L, 3]
        base = pos.floor().long()
        frac = pos - base
        corner = base[:, :, None, :] + self.corners[None, None]  # [N, L, 8, 3]
        res1 = (self.resolutions + 1)[None, :, None]
        dense_index = corner[..., 0] + res1 * (corner[..., 1] + res1 * corner[..., 2])
        # int64 multiply wraps like the reference's uint32 arithmetic once masked to the table size
        hashed = (corner[..., 0] * self.primes[0]) ^ (corner[..., 1] * self.primes[1]) ^ (
            corner[..., 2] * self.primes[2])
        index = torch.where(self.dense[None, :, None], dense_index, hashed)
        index = torch.remainder(index, self.sizes[None, :, None]) + self.offsets[None, :, None]
        w = torch.where(self.corners[None, None].bool(), frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)
        feats = self.embeddings[index.reshape(-1)].view(n, self.levels, 8, self.features)
        return (feats * w[..., None].to(feats.dtype)).sum(2).reshape(n, -1)
