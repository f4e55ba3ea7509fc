"""Export settings and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from backend.errors import ConfigError
from backend.mesh import MAX_FACES


@dataclass
class ExportConfig:
    grid_resolution: int = 256  # marching-cubes samples per axis over [-bound, bound]^3
    density_threshold: float = 10.0  # the iso-level: the surface is where density crosses it
    max_faces: int = 50_000  # simplify above this budget
    texture_size: int = 1024  # baked texture is texture_size × texture_size
    bound: float = 1.0  # half-extent of the sampled cube in the unit frame
    atlas_smoothing: int = 30  # Taubin iterations on the copy of the surface that UV charts are cut on
    # working memory of one field evaluation, in GiB: density and colour queries are chunked to stay under it
    memory_gb: float = 1.0

    def validate(self) -> None:
        """Raise `ConfigError` for a value of the wrong type, non-finite or out of range."""
        _check_int("grid_resolution", self.grid_resolution, 8, 1024)  # 1024^3 floats is already 4 GB
        _check_int("max_faces", self.max_faces, 100, MAX_FACES)
        _check_int("texture_size", self.texture_size, 16, 8192)
        _check_float("density_threshold", self.density_threshold)
        _check_float("bound", self.bound)
        if self.bound <= 0:
            raise ConfigError(f"export.bound must be positive, got {self.bound}")
        _check_int("atlas_smoothing", self.atlas_smoothing, 0, 1000)
        _check_float("memory_gb", self.memory_gb)
        if not 0.05 <= self.memory_gb <= 1024:
            raise ConfigError(f"export.memory_gb must be between 0.05 and 1024, got {self.memory_gb:g}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass, but `True` as a resolution is always a mistake
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"export.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"export.{name} must be between {lo:,} and {hi:,}, got {value:,}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"export.{name} must be a finite number, got {value!r}")
