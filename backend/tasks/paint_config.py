"""Latent-Paint's settings (`PaintConfig`) and the constants its texture is sized by."""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.cameras import CameraConfig
from backend.errors import ConfigError
from backend.render.mesh_render import FILTERS
from backend.shading import LightConfig
from backend.speed import SpeedConfig
from backend.tasks.distill import DistillConfig

VAE_FACTOR = 8  # texels of the final texture per latent texel
# the least gutter between the charts of an atlas made for painting: one latent texel, so no latent texel
# (nor a bilinear lookup of one chart) reaches into another chart, whose colour it would have to be too
PAINT_PADDING = VAE_FACTOR
# the latent stage's Adam betas: a texel's gradient scale swings by 100× with the timestep, and β2 = 0.999
# remembers the largest for a thousand steps, which stalls the rarely seen texels (undersides)
PAINT_BETAS = (0.9, 0.99)


@dataclass
class PaintConfig(DistillConfig):
    texture_size: int = 1024  # final RGB texture; the latent texture is texture_size / 8 (default 128)
    iters: int = 5000
    lr: float = 1e-2  # Latent-Paint's
    finetune_iters: int = 0  # RGB fine-tuning through the encoder after decoding (0: off)
    finetune_resolution: int = 512
    finetune_lr: float = 1e-3  # RGB texels in [0, 1]: the latent rate would jitter them by levels a step
    # the background MLP's: a network's rate (generate's MLPs learn at 1e-3), not the texels'; at theirs its
    # colour jitters by levels, and the texels along silhouettes take up the difference
    background_lr: float = 1e-3
    # the last fraction of each stage anneals its rate to 1% (cosine): a flat colour comes out flat, not
    # jittered by Adam's last steps
    lr_anneal: float = 0.3
    finetune_restart_schedules: bool = False  # true: fine-tuning starts timesteps over instead of continuing them
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    # the whole sphere of elevations, so undersides are painted too ("bottom view" prompts below −60°)
    camera: CameraConfig = field(default_factory=lambda: CameraConfig(elevation_range=(-90.0, 90.0)))
    light: LightConfig = field(default_factory=LightConfig)  # the RGB fine-tuning stage's random lights
    texture_filter: str = "mipmap"  # or "bilinear": Latent-Paint's original lookups (under-samples)
    # weight of the prior that neighbouring texels of one chart are alike (`texture_smoothness`): without
    # it, detail finer than the renders' pixels stays as speckle in flat regions; 0 turns it off
    smoothness: float = 0.01
    # samples per pixel each way in training renders: silhouettes antialiased like the prior's images, so
    # the texels along them are not pulled toward the background
    supersample: int = 4

    def validate(self) -> None:
        super().validate()
        if self.texture_filter not in FILTERS:
            raise ConfigError(f"texture_filter must be one of {', '.join(FILTERS)}, got {self.texture_filter!r}")
        self.light.validate()
        if self.iters < 1 or self.finetune_iters < 0:
            raise ConfigError("iters must be at least 1 and finetune_iters 0 or more")
        if not 64 <= self.texture_size <= 4096 or self.texture_size % VAE_FACTOR:
            raise ConfigError(f"texture_size must be a multiple of 8 in [64, 4096], got {self.texture_size}")
        if not 8 <= self.finetune_resolution <= 2048:
            raise ConfigError("finetune_resolution must be in [8, 2048]")
        if not (self.lr > 0 and self.finetune_lr > 0 and self.background_lr > 0):
            raise ConfigError("lr, finetune_lr and background_lr must be positive")
        if not 0 <= self.lr_anneal <= 1:
            raise ConfigError(f"lr_anneal must be a fraction in [0, 1], got {self.lr_anneal}")
        if not self.smoothness >= 0:
            raise ConfigError(f"smoothness must be 0 or more, got {self.smoothness}")
        if not 1 <= self.supersample <= 8:
            raise ConfigError(f"supersample must be in [1, 8], got {self.supersample}")
        self.speed.validate()
