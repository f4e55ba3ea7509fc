"""Evaluating the caller's fields in bounded chunks, without building autograd graphs."""

from __future__ import annotations

from collections.abc import Callable

import torch

Field = Callable[[torch.Tensor], torch.Tensor]  # [N, 3] unit-frame points → [N] or [N, C]

# Working memory of one field evaluation per point: the hash-grid NeRF's no-grad activations measure about
# 7.3 KB per point on the CPU (every level's corner indices and weights); rounded up for headroom.
BYTES_PER_POINT = 8 * 1024
MIN_CHUNK = 1 << 12


def chunk_points(memory_gb: float, points_per_query: int = 1) -> int:
    """Queries per field call that keep one call's working memory under `memory_gb`.

    `points_per_query` is how many field points one query evaluates (a colour stencil's size).
    """
    return max(MIN_CHUNK, int(memory_gb * 2**30 / (BYTES_PER_POINT * points_per_query)))


def evaluate(fn: Field, points: torch.Tensor, channels: int | None = None, chunk: int = 1 << 17,
             on_chunk: Callable[[int], None] | None = None) -> torch.Tensor:
    """`fn` over `points` [N, 3], as a float32 tensor [N] (`channels` None) or [N, channels].

    At most `chunk` points go to `fn` at once; `on_chunk` hears each chunk's point count once it is done.
    """
    shape = (-1,) if channels is None else (-1, channels)
    with torch.no_grad():
        parts = []
        for part in points.split(chunk):
            out = fn(part).float().reshape(shape)
            if len(out) != len(part):
                raise ValueError(f"a field returned {len(out)} values for {len(part)} points")
            parts.append(out)
            if on_chunk is not None:
                on_chunk(len(part))
        if not parts:
            return torch.zeros((0,) if channels is None else (0, channels), device=points.device)
        return torch.cat(parts)
