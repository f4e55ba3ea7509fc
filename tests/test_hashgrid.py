"""The lean hash-grid encoding against a small readable reference: every level, forward and backward."""

from __future__ import annotations

import pytest
import torch

from backend.scene import hashgrid
from backend.scene.hashgrid import PRIMES, HashGrid


def reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written out plainly: every level's 8 corners at once, int64 throughout."""
    out = []
    for level in grid.level_specs:
        pos = x.clamp(0, 1) * level.resolution
        base = pos.floor().long()
        frac = pos - base
        level_out = 0
        for corner in range(8):
            bits = torch.tensor([corner >> 2 & 1, corner >> 1 & 1, corner & 1])
            c = base + bits
            if level.dense:
                index = c[:, 0] + (level.resolution + 1) * (c[:, 1] + (level.resolution + 1) * c[:, 2])
            else:
                index = (c[:, 0] * PRIMES[0]) ^ (c[:, 1] * PRIMES[1]) ^ (c[:, 2] * PRIMES[2])
            index = index % level.size + level.offset
            weight = torch.where(bits.bool(), frac, 1 - frac).prod(-1)
            level_out = level_out + grid.embeddings[index] * weight[:, None]
        out.append(level_out)
    return torch.cat(out, -1)


def random_inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.2 - 0.1  # some outside [0, 1], which the encoding clamps
    x[:8] = torch.tensor([0.0, 1.0]).repeat(12)[:24].view(8, 3)  # the cube's corners and faces
    return x


@pytest.mark.parametrize("chunk", [hashgrid.CHUNK, 37])  # one pass, and many passes with a ragged last one
def test_encoding_equals_the_reference_at_every_level_forward_and_backward(monkeypatch, chunk) -> None:
    monkeypatch.setattr(hashgrid, "CHUNK", chunk)
    grid = HashGrid(levels=6, features=2, log2_table_size=10, base_resolution=3, max_resolution=97)
    kinds = [level.dense for level in grid.level_specs]
    assert any(kinds) and not all(kinds)  # coarse levels dense, fine ones hashed
    torch.nn.init.normal_(grid.embeddings)
    x = random_inputs(500, 0).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    got, want = grid(x), reference(grid, ref_x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    upstream = torch.randn_like(want)
    (got_table,) = torch.autograd.grad(got, grid.embeddings, upstream, retain_graph=True)
    (want_table,) = torch.autograd.grad(want, grid.embeddings, upstream, retain_graph=True)
    torch.testing.assert_close(got_table, want_table, rtol=1e-5, atol=1e-5)
    # the position gradient too, away from the faces where floor() jumps
    inside = 8
    (got_x,) = torch.autograd.grad(got, x, upstream)
    (want_x,) = torch.autograd.grad(want, ref_x, upstream)
    torch.testing.assert_close(got_x[inside:], want_x[inside:], rtol=1e-4, atol=1e-4)

    for n in range(len(grid.level_specs)):  # level by level, so a wrong level is named
        cols = slice(2 * n, 2 * n + 2)
        torch.testing.assert_close(got[:, cols], want[:, cols], rtol=1e-6, atol=1e-6, msg=f"level {n}")


def test_default_grid_equals_the_reference_and_indices_stay_in_each_level() -> None:
    grid = HashGrid()  # production sizes: 16 levels, 2^19 rows, up to 2048³
    torch.nn.init.normal_(grid.embeddings)
    x = random_inputs(300, 1)
    with torch.no_grad():
        torch.testing.assert_close(grid(x), reference(grid, x), rtol=1e-6, atol=1e-6)
    for level in grid.level_specs:
        index, weight, _ = level.corners(x.clamp(0, 1).t().contiguous())
        assert index.dtype == torch.int32 and int(index.min()) >= 0 and int(index.max()) < level.size
        torch.testing.assert_close(weight.sum(0), torch.ones(len(x)))


def test_the_compiled_path_differentiates_the_same_operations() -> None:
    """Under torch.compile the encoding's operations are differentiated by autograd, not the custom backward."""
    grid = HashGrid(levels=4, features=2, log2_table_size=8, base_resolution=2, max_resolution=40)
    torch.nn.init.normal_(grid.embeddings)
    x = random_inputs(200, 2)
    plain = hashgrid._encode(x.clamp(0, 1), grid.embeddings, grid.level_specs)
    upstream = torch.randn_like(plain)
    (want,) = torch.autograd.grad(reference(grid, x), grid.embeddings, upstream)
    (got,) = torch.autograd.grad(plain, grid.embeddings, upstream)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grid(torch.empty(0, 3)).shape == (0, 8)  # an empty batch (an export chunk with nothing occupied)
