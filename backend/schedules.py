"""Which diffusion timestep each optimisation step uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from backend.errors import ConfigError


@dataclass
class TimestepConfig:
    schedule: str = "uniform"  # one of TIMESTEP_SCHEDULES
    t_min: float = 0.02  # fractions of the scheduler's training timesteps (HiFA's sqrt: 0.98 → 0.3)
    t_max: float = 0.98

    def validate(self) -> None:
        if self.schedule not in TIMESTEP_SCHEDULES:
            raise ConfigError(f"unknown timestep schedule {self.schedule!r}",
                              f"choose one of {', '.join(sorted(TIMESTEP_SCHEDULES))}")
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ConfigError(f"timesteps need 0 ≤ t_min < t_max ≤ 1, got t_min={self.t_min}, t_max={self.t_max}")


def uniform_timesteps(config: TimestepConfig, step: int, total: int, batch: int, num_train: int,
                      generator: torch.Generator) -> torch.Tensor:
    """t ~ U[t_min, t_max] · T, independently per batch item (DreamFusion, Latent-NeRF)."""
    lo, hi = int(config.t_min * num_train), int(config.t_max * num_train)
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
                     generator: torch.Generator) -> torch.Tensor:
    return TIMESTEP_SCHEDULES[config.schedule](config, step, total, batch, num_train, generator)
