"""Speed switches: how a step is computed on a device, never what it computes (beyond rounding).

Each switch is "auto" by default, which resolves to the CUDA choice on a GPU and to the plain path
elsewhere, with two exceptions: Adam's fused kernel is on for a CPU too (6× faster than the per-tensor
loop over the hash table's 17 M entries, the same maths to rounding), and the occupancy grid
(empty-space skipping) is on everywhere once the field has formed. Every switch "off" is the plain path
exactly. Tasks resolve their config once per job (`resolve`) and hand it to the parts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from backend.errors import ConfigError
from backend.render.occupancy import WARMUP, OccupancyConfig

SWITCH = ("auto", "on", "off")
COMPILE = ("auto", "off", "default", "reduce-overhead")  # torch.compile modes; "reduce-overhead" adds CUDA graphs
CUDA_REPORT_EVERY = 10  # loss reports on CUDA: each one reads the losses back, a host sync


@dataclass
class SpeedConfig:
    # what "auto" means on CUDA, and on a CPU; on other devices it means "off"
    CUDA_CHOICE: ClassVar[dict[str, str]] = {"channels_last": "on", "compile_unet": "reduce-overhead",
                                             "fused_optimizer": "on"}
    CPU_CHOICE: ClassVar[dict[str, str]] = {"fused_optimizer": "on"}  # every other "auto" is off on a CPU

    channels_last: str = "auto"  # U-Net and VAE weights channels-last (tensor-core convolutions want NHWC)
    compile_unet: str = "auto"  # torch.compile the U-Net, static shapes (CFG's batch never changes)
    fused_optimizer: str = "auto"  # Adam's fused kernel: one launch for all parameters
    report_every: int = 0  # steps between loss reports; 0: 10 on CUDA, every step elsewhere

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                continue
            choices = COMPILE if f.name.startswith("compile_") else SWITCH
            if value not in choices:
                raise ConfigError(f"speed.{f.name} must be one of {', '.join(choices)}, got {value!r}")
        if self.report_every < 0:
            raise ConfigError(f"speed.report_every must be 0 (auto) or more, got {self.report_every}")

    def resolve(self, device: torch.device | str) -> SpeedConfig:
        """A copy with every "auto" (and report_every 0) replaced by its value on `device`."""
        self.validate()
        kind = torch.device(device).type
        cuda = kind == "cuda"
        here = self.CUDA_CHOICE if cuda else self.CPU_CHOICE if kind == "cpu" else {}
        changes: dict[str, object] = {name: here.get(name, "off") for name in self.CUDA_CHOICE
                                      if getattr(self, name) == "auto"}
        if self.report_every == 0:
            changes["report_every"] = CUDA_REPORT_EVERY if cuda else 1
        return dataclasses.replace(self, **changes)

    def adam(self, params: list[dict] | list[torch.Tensor], **kwargs: object) -> torch.optim.Adam:
        """Adam over `params`, fused when this (resolved) config says so."""
        if self.fused_optimizer == "on":
            kwargs["fused"] = True
        return torch.optim.Adam(params, **kwargs)


@dataclass
class FieldSpeedConfig(SpeedConfig):
    """The switches of a task that optimises a neural field (Latent-NeRF)."""

    CUDA_CHOICE: ClassVar[dict[str, str]] = {**SpeedConfig.CUDA_CHOICE, "compile_field": "default"}

    compile_field: str = "auto"  # torch.compile the hash grid + MLP (sample counts differ by stage: not static)
    # empty-space skipping, on every device once the field has formed
    occupancy: OccupancyConfig = field(default_factory=lambda: OccupancyConfig(enabled="auto", warmup=WARMUP))

    def validate(self) -> None:
        super().validate()
        self.occupancy.validate()

    def resolve(self, device: torch.device | str) -> FieldSpeedConfig:
        resolved = super().resolve(device)
        if self.occupancy.enabled == "auto":  # the same on every device: skipping saves as much on a CPU
            resolved.occupancy = dataclasses.replace(self.occupancy, enabled="on")
        return resolved
