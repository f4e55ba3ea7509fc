"""nvdiffrast on CUDA behind the pure-torch rasteriser's interface (same `rast` layout, row 0 on top)."""

from __future__ import annotations

import sys
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _context():  # noqa: ANN202 - nvdiffrast type
    _make_plugin_importable()
    import nvdiffrast.torch as dr

    return dr, dr.RasterizeCudaContext()


def _make_plugin_importable() -> None:
    """nvdiffrast 0.3.x JIT-builds its plugin into torch's extension folder, but on torch ≥ 2.10 its loader
    no longer finds the module there: put that folder on sys.path first (harmless where not needed)."""
    from torch.utils import cpp_extension

    for plugin in ("nvdiffrast_plugin", "nvdiffrast_plugin_gl"):
        folder = cpp_extension._get_build_directory(plugin, False)
        if folder not in sys.path:
            sys.path.append(folder)


def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Same contract as `backend.render.rasterize.rasterize`, on the GPU."""
    dr, ctx = _context()
    if pos.dim() == 2:
        pos = pos[None]
    rast, _ = dr.rasterize(ctx, pos.float().contiguous(), tri.int().contiguous(), resolution)
    # nvdiffrast's row 0 is the bottom of the image (y up); ours is the top
    return rast.flip(1)
