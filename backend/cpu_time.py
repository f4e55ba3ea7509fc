"""A job's rough wall time on a CPU from its settings, per stage, for the warning before a run that would take
hours.

The figures are per-step costs measured on a 2-core CPU (the U-Net on both cores, the rest on one): the
field's render and backward grow with the rendered pixels, its levels and its samples per ray, the mesh
stage's with its render's pixels and its tetrahedral grid, and Stable Diffusion adds its U-Net (with
classifier-free guidance, two latents) per step and its VAE encoder (forward and backward) per RGB step.
They are a projection, not a promise: load on the machine moves them by a factor of two either way.
"""

from __future__ import annotations

from typing import Any

# a 64² render of the default field (16 levels, 64 samples per ray): 1.2 s a step, forward and backward
# (0.34 s at 32²); a field of 8 levels and 32 samples takes about a quarter (0.07 s at 32²)
FIELD_S_PER_PIXEL = 1.2 / 64**2
FIELD_LEVELS, FIELD_SAMPLES = 16, 64
UNET_S = 10.0  # SD 1.5's U-Net on a batch of two 64² latents, forward and backward through the VAE-free path
VAE_S_PER_PIXEL = 3.8 / 256**2  # SD 1.5's VAE encoder on an RGB render, forward and backward (0.9 s at 128²)
PAINT_S_PER_PIXEL = 0.2 / 64**2  # rasterising and sampling a latent texture is cheap beside the U-Net
# the mesh stage: rasterising, shading and colouring a pixel (0.1 s a step at 128², 1.8 s at 512²) and
# differentiable marching tetrahedra over its grid (0.26 s a step at 64³ cubes, 2.1 s at 128³)
MESH_S_PER_PIXEL = 7e-6
MESH_S_PER_CUBE = 1e-6
CPU_WARN_S = 600.0  # a CPU job projected past this says so, whatever settings were given


def project_cpu_stages(task: str, config: Any, with_unet: bool) -> dict[str, float]:
    """Seconds each stage of a `task` ("generate" or "paint") job with `config` would take on a CPU."""
    unet = UNET_S if with_unet else 0.0
    vae = VAE_S_PER_PIXEL if with_unet else 0.0  # an analytic prior encodes by averaging pixels
    if task == "paint":
        return {"paint": config.iters * (unet + PAINT_S_PER_PIXEL * config.resolution**2),
                "rgb_finetune": config.finetune_iters * (unet + PAINT_S_PER_PIXEL * config.resolution**2),
                "export": 10.0}
    from backend.export.progress import estimate_export_s

    refine, mesh = config.refine, config.mesh
    field = FIELD_S_PER_PIXEL * (config.nerf.levels / FIELD_LEVELS) * (
        (config.render.samples + config.render.importance_samples) / FIELD_SAMPLES)
    return {"latent": config.optim.iters * (unet + field * config.resolution**2 * config.optim.batch),
            "rgb_refine": refine.iters * (unet + (field + vae) * refine.resolution**2),
            "mesh": mesh.iters * (unet + (MESH_S_PER_PIXEL + vae) * mesh.resolution**2
                                  + MESH_S_PER_CUBE * mesh.grid_resolution**3),
            "export": estimate_export_s(config.export, "cpu")}


def project_cpu_s(task: str, config: Any, with_unet: bool) -> float:
    """Seconds a `task` ("generate" or "paint") job with `config` would take on a CPU."""
    return sum(project_cpu_stages(task, config, with_unet).values())


def duration(seconds: float) -> str:
    """`seconds` as a person reads it: '40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
