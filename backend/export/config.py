"""Export settings and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from backend.catalog import MAX_LODS, MIN_EXPORT_FACES
from backend.errors import ConfigError
from backend.mesh import MAX_FACES

MIN_LOD_FACES = 50  # the coarsest level of detail keeps at least this many faces


@dataclass
class ExportConfig:
    grid_resolution: int = 256  # marching-cubes samples per axis over [-bound, bound]^3
    density_threshold: float = 10.0  # the iso-level: the surface is where density crosses it
    max_faces: int = 50_000  # simplify above this budget (with `quad`: polygons, each at most two triangles)
    quad: bool = False  # a quad-dominant remesh (Instant Meshes) instead of a simplified triangle mesh
    lods: int = 1  # levels of detail: LOD0 at the budget, each next one `lod_ratio` of the one before
    lod_ratio: float = 0.5
    texture_size: int = 1024  # baked texture is texture_size × texture_size
    bound: float = 1.0  # half-extent of the sampled cube in the unit frame
    atlas_smoothing: int = 30  # Taubin iterations on the copy of the surface that UV charts are cut on
    # working memory of one field evaluation, in GiB: density and colour queries are chunked to stay under it
    memory_gb: float = 1.0

    def validate(self) -> None:
        """Raise `ConfigError` for a value of the wrong type, non-finite or out of range."""
        _check_int("grid_resolution", self.grid_resolution, 8, 1024)  # 1024^3 floats is already 4 GB
        _check_int("max_faces", self.max_faces, MIN_EXPORT_FACES, MAX_FACES)
        if not isinstance(self.quad, bool):
            raise ConfigError(f"export.quad must be true or false, got {self.quad!r}")
        _check_int("lods", self.lods, 1, MAX_LODS)
        _check_float("lod_ratio", self.lod_ratio)
        if not 0.1 <= self.lod_ratio <= 0.9:
            raise ConfigError(f"export.lod_ratio must be between 0.1 and 0.9, got {self.lod_ratio:g}")
        coarsest = lod_budgets(self.max_faces, self.lods, self.lod_ratio)[-1]
        if coarsest < MIN_LOD_FACES:
            raise ConfigError(f"{self.lods} levels of detail from {self.max_faces:,} faces leave the last one "
                              f"{coarsest} faces, under {MIN_LOD_FACES}",
                              "ask for fewer levels of detail (--lods) or more faces (--faces)")
        _check_int("texture_size", self.texture_size, 16, 8192)
        _check_float("density_threshold", self.density_threshold)
        _check_float("bound", self.bound)
        if self.bound <= 0:
            raise ConfigError(f"export.bound must be positive, got {self.bound}")
        _check_int("atlas_smoothing", self.atlas_smoothing, 0, 1000)
        _check_float("memory_gb", self.memory_gb)
        if not 0.05 <= self.memory_gb <= 1024:
            raise ConfigError(f"export.memory_gb must be between 0.05 and 1024, got {self.memory_gb:g}")


def lod_budgets(faces: int, lods: int, ratio: float) -> list[int]:
    """The face budget of each level of detail: `faces` for LOD0, then `ratio` of the level before."""
    return [max(1, int(faces * ratio**k)) for k in range(lods)]


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass, but `True` as a resolution is always a mistake
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"export.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"export.{name} must be between {lo:,} and {hi:,}, got {value:,}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"export.{name} must be a finite number, got {value!r}")
