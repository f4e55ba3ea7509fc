"""Extra losses on a render, each a small pure function."""

from __future__ import annotations

import torch


def sparsity(opacity: torch.Tensor) -> torch.Tensor:
    """Latent-NeRF's sparsity loss: binary entropy of each pixel's object/background blend weight.

    Low when every pixel is clearly object or clearly background, which removes floating haze.
    """
    a = opacity.clamp(1e-5, 1 - 1e-5)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()
