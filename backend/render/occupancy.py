"""Empty-space skipping for the volume renderer: a coarse occupancy grid, as in Instant-NGP.

The grid holds a density per cell over the field's bounding cube. Every `update_every` training renders,
the field is evaluated at one jittered point per cell and each cell keeps the larger of its decayed old
value and the new one, so a cell empties only after the field has stayed thin there for a while. Samples
in cells under `threshold` get zero density without the field seeing them.

Shapes stay static between updates, so a compiled field is not recompiled every step: the field sees a
fixed budget of samples, the occupied ones first (by their cell's density when more are occupied than fit).
The budget is re-chosen at each update from the largest occupied fraction seen since the last one, with
a margin, rounded up to a multiple of 1/`buckets`; reading that fraction back is the grid's one host sync,
once per update. Until the first update, and whenever the budget is all samples, the field sees every
sample and empty ones are masked, which is the plain render exactly wherever the grid is conservative.

Skipped samples get no gradient, so this changes what is optimised (a cell that empties stays empty
unless the field grows there through its neighbours); so the grid first waits `warmup` training renders,
until the field has taken shape, rendering the plain way meanwhile. It is on by default on every device
(`speed.occupancy.enabled = "auto"`). Its state lives with the renderer, not in checkpoints; a resumed job
starts with everything occupied, which is always safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from backend.errors import ConfigError

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points → (density, features)

UPDATE_CHUNK = 1 << 18  # cells per field call during an update
WARMUP = 100  # a field task's default `warmup`: the field has formed around its blob by then


@dataclass
class OccupancyConfig:
    enabled: str = "off"  # "on", "off", or "auto" (a field task resolves it to "on" on every device)
    resolution: int = 64  # cells per axis over [-bound, bound]³
    update_every: int = 16  # training renders between grid updates
    decay: float = 0.95  # per update, unless the field re-confirms the cell's density
    # σ under which a cell is empty: a ray through 2·bound of such cells keeps over 98% transmittance
    threshold: float = 0.01
    margin: float = 1.25  # the field's budget: this × the largest occupied fraction of samples seen lately
    buckets: int = 8  # budgets are multiples of 1/buckets of all samples: few shapes to compile
    warmup: int = 0  # training renders the plain way before the first update (a job's default: WARMUP)

    def validate(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ConfigError(f"speed.occupancy.enabled must be auto, on or off, got {self.enabled!r}")
        if not 8 <= self.resolution <= 256:
            raise ConfigError(f"speed.occupancy.resolution must be in [8, 256], got {self.resolution}")
        if self.update_every < 1 or self.buckets < 1:
            raise ConfigError("speed.occupancy.update_every and speed.occupancy.buckets must be at least 1")
        if self.warmup < 0:
            raise ConfigError(f"speed.occupancy.warmup must be 0 or more, got {self.warmup}")
        if not 0.0 <= self.decay <= 1.0 or not self.threshold >= 0 or not self.margin >= 1.0:
            raise ConfigError("speed.occupancy needs decay in [0, 1], threshold ≥ 0 and margin ≥ 1")


class OccupancyGrid:
    def __init__(self, config: OccupancyConfig, bound: float) -> None:
        config.validate()
        self.config, self.bound = config, bound
        self.density: torch.Tensor | None = None  # [R³] per cell; None until the first update: all occupied
        self.budget = 1.0  # fraction of a render's samples the field is evaluated on
        self.renders = 0
        self._fractions: list[torch.Tensor] = []  # occupied fraction of each render since the last update
        self._generator: torch.Generator | None = None

    def cells(self, points: torch.Tensor) -> torch.Tensor:
        """Flat cell index [N] of points [N, 3] in the bounding cube."""
        r = self.config.resolution
        ijk = ((points.detach() / self.bound + 1) * (r / 2)).long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]

    def train_render(self, field: Field, device: torch.device) -> None:
        """Count a training render; update the grid on the first after `warmup`, then every `update_every`."""
        since = self.renders - self.config.warmup
        if since >= 0 and since % self.config.update_every == 0:
            self.update(field, device)
        self.renders += 1

    def update(self, field: Field, device: torch.device) -> None:
        c, r = self.config, self.config.resolution
        if self._generator is None:  # its own stream: the job's random draws stay those of the plain path
            self._generator = torch.Generator(device).manual_seed(0)
        axis = torch.arange(r, device=device, dtype=torch.float32)
        corner = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        jitter = torch.rand(corner.shape, generator=self._generator, device=device)
        points = (corner + jitter) * (2 * self.bound / r) - self.bound
        with torch.no_grad():
            sigma = torch.cat([field(chunk)[0].float() for chunk in points.split(UPDATE_CHUNK)])
        sigma = torch.nan_to_num(sigma, nan=math.inf)  # a diverged cell is never skipped
        self.density = sigma if self.density is None else torch.maximum(self.density * c.decay, sigma)
        if self._fractions:
            seen = float(torch.stack(self._fractions).max())  # the host sync, once per update
            self.budget = min(1.0, math.ceil(seen * c.margin * c.buckets) / c.buckets)
            self._fractions.clear()

    def wrap(self, field: Field) -> Field:
        """`field` with samples in empty cells skipped (density 0, features 0 or the field's own)."""
        if self.density is None:
            return field

        def skipping(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            density = self.density[self.cells(points)]
            occupied = density > self.config.threshold
            self._fractions.append(occupied.float().mean())
            n = points.shape[0]
            k = math.ceil(self.budget * n)
            if k >= n:
                sigma, feats = field(points)
                return sigma * occupied, feats
            # the k samples in the densest cells: all occupied ones whenever they fit
            index = torch.topk(torch.where(occupied, density, -1.0), k, sorted=False).indices
            sigma, feats = field(points[index])
            sigma = sigma * occupied[index]
            return (sigma.new_zeros(n).index_put((index,), sigma),
                    feats.new_zeros(n, feats.shape[-1]).index_put((index,), feats))

        return skipping

    def wrap_density(self, density: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """`density` (points [N, 3] → [N]) evaluated only in occupied cells, 0 elsewhere: for the export's
        grid, whose shapes need not stay static."""
        if self.density is None:
            return density

        def skipping(points: torch.Tensor) -> torch.Tensor:
            occupied = (self.density[self.cells(points)] > self.config.threshold).nonzero().flatten()
            values = density(points[occupied])
            return values.new_zeros(points.shape[0]).index_put((occupied,), values)

        return skipping
