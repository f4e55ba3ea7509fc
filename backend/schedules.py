"""Which diffusion timestep each optimisation step uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from backend.errors import ConfigError


@dataclass
class TimestepConfig:
    schedule: str = "uniform"  # one of TIMESTEP_SCHEDULES
    t_min: float = 0.02  # fractions of the scheduler's training timesteps (HiFA's sqrt: 0.98 → 0.3)
    t_max: float = 0.98
    # from `late_from` (a fraction of the job) on, uniform draws stop at `late_t_max` instead of t_max (None:
    # never). ProlificDreamer's schedule as threestudio runs it: 0.98 → 0.5 at step 5,000 of 25,000.
    late_t_max: float | None = None
    late_from: float = 0.2

    def validate(self) -> None:
        if self.schedule not in TIMESTEP_SCHEDULES:
            raise ConfigError(f"unknown timestep schedule {self.schedule!r}",
                              f"choose one of {', '.join(sorted(TIMESTEP_SCHEDULES))}")
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ConfigError(f"timesteps need 0 ≤ t_min < t_max ≤ 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.late_t_max is not None and not self.t_min < self.late_t_max <= self.t_max:
            raise ConfigError(f"timesteps.late_t_max must be in (t_min, t_max], got {self.late_t_max}")
        if not 0.0 <= self.late_from <= 1.0:
            raise ConfigError(f"timesteps.late_from is a fraction of the job in [0, 1], got {self.late_from}")


def uniform_timesteps(config: TimestepConfig, step: int, total: int, batch: int, num_train: int,
                      generator: torch.Generator) -> torch.Tensor:
    """t ~ U[t_min, t_max] · T, independently per batch item (DreamFusion, Latent-NeRF); t_max drops to
    `late_t_max` from `late_from` of the job on (ProlificDreamer)."""
    late = config.late_t_max is not None and step >= config.late_from * total
    lo, hi = int(config.t_min * num_train), int((config.late_t_max if late else config.t_max) * num_train)
    return torch.randint(lo, hi + 1, (batch,), generator=generator).clamp(max=num_train - 1)


def sqrt_annealed_timesteps(config: TimestepConfig, step: int, total: int, batch: int, num_train: int,
                            generator: torch.Generator) -> torch.Tensor:
    """HiFA: t = t_max − (t_max − t_min)·√(step/total), the same for the whole batch.

    t falls fast at first and slowly later, so most steps go to low noise levels, where details form.
    """
    fraction = config.t_max - (config.t_max - config.t_min) * math.sqrt(min(max(step / total, 0.0), 1.0))
    t = min(round(fraction * num_train), num_train - 1)
    return torch.full((batch,), t, dtype=torch.long)


TIMESTEP_SCHEDULES = {"uniform": uniform_timesteps, "sqrt": sqrt_annealed_timesteps}


def sample_timesteps(config: TimestepConfig, step: int, total: int, batch: int, num_train: int,
                     generator: torch.Generator, limits: tuple[float, float] | None = None) -> torch.Tensor:
    """t [batch] for the job's `step` of `total`. `limits` is a stage's own range (fractions): a uniform
    schedule then draws from it instead, an annealed one keeps its values, clamped into it."""
    if limits is not None and config.schedule == "uniform":
        config = replace(config, t_min=limits[0], t_max=limits[1], late_t_max=None)
    t = TIMESTEP_SCHEDULES[config.schedule](config, step, total, batch, num_train, generator)
    if limits is not None:
        t = t.clamp(int(limits[0] * num_train), int(limits[1] * num_train))
    return t
