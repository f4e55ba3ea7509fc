"""A job's rough wall time on a CPU from its settings, for the warning before a run that would take hours.

The figures are per-step costs measured on a 2-core CPU: the field's render and backward grow with the
rendered pixels, and Stable Diffusion adds its U-Net (with classifier-free guidance, two latents) per step.
They are a projection, not a promise: load on the machine moves them by a factor of two either way.
"""

from __future__ import annotations

from typing import Any

FIELD_S_PER_PIXEL = 5.5 / 32**2  # a 32² render of the default field: 5–6 s a step (forward and backward)
UNET_S = 10.0  # SD 1.5's U-Net on a batch of two 64² latents, forward and backward through the VAE-free path
PAINT_S_PER_PIXEL = 0.2 / 64**2  # rasterising and sampling a latent texture is cheap beside the U-Net


def project_cpu_s(task: str, config: Any, with_unet: bool) -> float:
    """Seconds a `task` ("generate" or "paint") job with `config` would take on a CPU."""
    unet = UNET_S if with_unet else 0.0
    if task == "paint":
        return (config.iters + config.finetune_iters) * (unet + PAINT_S_PER_PIXEL * config.resolution**2) + 10.0
    from backend.export.progress import estimate_export_s

    latent = config.optim.iters * (unet + FIELD_S_PER_PIXEL * config.resolution**2 * config.optim.batch)
    refine = config.refine.iters * (unet + FIELD_S_PER_PIXEL * config.refine.resolution**2)
    return latent + refine + estimate_export_s(config.export, "cpu")


def duration(seconds: float) -> str:
    """`seconds` as a person reads it: '40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
