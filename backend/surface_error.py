"""How far an asset is from a known reference, as an artist would judge it: volume, distance and normals.

- voxel IoU: filled voxelisations of both closed meshes on one grid (the shape's volume);
- Chamfer distance: the mean of both directions' mean point-to-surface distances, as a fraction of the
  reference's bounding-box diagonal (where the surface is);
- normal error: the angle between the asset's face normal at points spread evenly over its area and the
  reference's face normal at the nearest point of the reference (how the surface shades: a bumpy surface
  with the right volume and the right place still shades wrong).

The known-answer tests, `benchmarks/surface_quality.py` and the command line's summary of a job whose
prior is a known mesh all measure with this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import igl
import numpy as np
import trimesh

from backend.mesh import Mesh

SAMPLES = 20_000  # points per surface: the figures move by well under 1 % between seeds


@dataclass(frozen=True)
class SurfaceError:
    iou: float  # filled-voxel IoU
    chamfer: float  # fraction of the reference's bounding-box diagonal
    normal_mean_deg: float
    normal_median_deg: float

    def describe(self) -> str:
        return (f"voxel IoU {self.iou:.3f}, Chamfer {100 * self.chamfer:.2f} % of its diagonal, normals "
                f"{self.normal_mean_deg:.1f}° off on average (median {self.normal_median_deg:.1f}°)")

    def as_dict(self) -> dict[str, float]:
        return {"iou": round(self.iou, 4), "chamfer_pct": round(100 * self.chamfer, 3),
                "normal_mean_deg": round(self.normal_mean_deg, 2),
                "normal_median_deg": round(self.normal_median_deg, 2)}


def _trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), process=False)


def voxel_sets(meshes: list[Mesh], resolution: int = 64) -> list[np.ndarray]:
    """Filled voxelisations of closed meshes, sampled on one grid over all of them."""
    lo = np.min([m.vertices.min(0) for m in meshes], axis=0)
    hi = np.max([m.vertices.max(0) for m in meshes], axis=0)
    pitch = float((hi - lo).max()) / resolution
    axes = [np.arange(lo[k], hi[k] + pitch, pitch) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def filled(m: Mesh) -> np.ndarray:
        return _trimesh(m).voxelized(pitch / 2).fill().is_filled(grid)

    return [filled(m) for m in meshes]


def set_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def voxel_iou(a: Mesh, b: Mesh, resolution: int = 64) -> float:
    """Volume IoU of two closed meshes: filled voxelisations sampled on one grid over both."""
    return set_iou(*voxel_sets([a, b], resolution))


def _nearest(points: np.ndarray, mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each point to `mesh`'s surface and the face the nearest point lies on."""
    squared, face, _ = igl.point_mesh_squared_distance(points, np.asarray(mesh.vertices, np.float64),
                                                       np.asarray(mesh.faces, np.int64))
    return np.sqrt(squared), face


def chamfer_and_normals(asset: Mesh, reference: Mesh, samples: int = SAMPLES, seed: int = 0
                        ) -> tuple[float, np.ndarray]:
    """Symmetric Chamfer distance (in the meshes' units) and the asset's normal error per sample (degrees)."""
    a, r = _trimesh(asset), _trimesh(reference)
    points_a, faces_a = trimesh.sample.sample_surface(a, samples, seed=seed)
    points_r, _ = trimesh.sample.sample_surface(r, samples, seed=seed)
    to_reference, nearest = _nearest(points_a, r)
    to_asset, _ = _nearest(points_r, a)
    cosine = (a.face_normals[faces_a] * r.face_normals[nearest]).sum(-1)
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return float((to_reference.mean() + to_asset.mean()) / 2), angles


def chamfer(asset: Mesh, reference: Mesh, samples: int = SAMPLES, seed: int = 0) -> float:
    """Symmetric point-to-surface Chamfer distance, in the meshes' units."""
    return chamfer_and_normals(asset, reference, samples, seed)[0]


def surface_error(asset: Mesh, reference: Mesh, samples: int = SAMPLES, resolution: int = 64,
                  seed: int = 0) -> SurfaceError:
    """Every figure of `asset` against `reference` (both closed, in the same frame)."""
    distance, angles = chamfer_and_normals(asset, reference, samples, seed)
    diagonal = float(np.linalg.norm(reference.vertices.max(0) - reference.vertices.min(0)))
    return SurfaceError(voxel_iou(asset, reference, resolution), distance / diagonal,
                        float(angles.mean()), float(np.median(angles)))
