"""Evaluating the caller's fields in bounded chunks, without building autograd graphs."""

from __future__ import annotations

from collections.abc import Callable

import torch

Field = Callable[[torch.Tensor], torch.Tensor]  # [N, 3] unit-frame points → [N] or [N, C]

CHUNK = 1 << 18  # points per call: bounds the network's activation memory


def evaluate(fn: Field, points: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """`fn` over `points` [N, 3], as a float32 tensor [N] (`channels` None) or [N, channels]."""
    shape = (-1,) if channels is None else (-1, channels)
    with torch.no_grad():
        parts = []
        for chunk in points.split(CHUNK):
            out = fn(chunk).float().reshape(shape)
            if len(out) != len(chunk):
                raise ValueError(f"a field returned {len(out)} values for {len(chunk)} points")
            parts.append(out)
        return torch.cat(parts)
