"""The density field's surface as a clean triangle mesh: marching cubes, main component, budget."""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from backend.errors import NoSurfaceError
from backend.export.config import ExportConfig
from backend.export.fields import CHUNK, Field, evaluate
from backend.mesh import Mesh


def extract_mesh(density_fn: Field, config: ExportConfig, device: torch.device | str = "cpu") -> Mesh:
    """The largest connected surface where `density_fn` crosses the threshold, in the unit frame, no UVs.

    Faces wind counter-clockwise seen from outside: normals point from high density to low.
    """
    config.validate()
    grid = sample_grid(density_fn, config.grid_resolution, config.bound, device)
    level = float(config.density_threshold)
    dense = grid > level  # NaN compares False: a diverged field counts as empty
    if not dense.any() or dense.all():
        raise no_surface(grid, level)
    # a layer of empty samples around the grid closes surfaces that reach the volume's faces
    empty = level - max(1.0, abs(level))
    grid = np.pad(np.nan_to_num(grid, copy=False, nan=empty, neginf=empty), 1, constant_values=empty)
    step = 2 * config.bound / (config.grid_resolution - 1)
    # 'ascent': the object is where values are high, so faces wind to put normals towards low density
    verts, faces, _, _ = marching_cubes(grid, level, spacing=(step,) * 3, gradient_direction="ascent",
                                        allow_degenerate=False)
    # padded index 1 is grid node 0 at −bound; vertices in the padding layer go onto the volume's faces
    verts = np.clip(verts - step - config.bound, -config.bound, config.bound)
    # clipping stacks vertices on those faces: weld them (trimesh's processing) and drop the slivers left
    mesh = trimesh.Trimesh(verts, faces)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh = main_component(mesh)
    if len(mesh.faces) > config.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=config.max_faces)
    return Mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64))


def no_surface(grid: np.ndarray, level: float) -> NoSurfaceError:
    """The error for a grid that is all below (or all above) `level`, with what was measured and a
    threshold that does give a surface: half-way between the field's lowest and peak density (its
    half-maximum contour), which always has samples on both sides when the field is not constant."""
    finite = grid[np.isfinite(grid)]
    if finite.size == 0:
        return NoSurfaceError(f"the optimised field is empty: every density is NaN or infinite, none above the "
                              f"export threshold {level:g} (the training diverged)",
                              "no export.density_threshold gives it a surface: train again with a lower learning "
                              "rate or another seed", {"threshold": level})
    lo, peak = float(finite.min()), float(finite.max())
    details: dict = {"peak_density": _round(peak), "lowest_density": _round(lo), "threshold": level}
    if peak <= level:
        message = (f"the optimised field is empty: its peak density is {peak:.3g}, at or below the export "
                   f"threshold {level:g}")
    else:
        message = (f"the optimised field fills the whole volume: its lowest density is {lo:.3g}, above the "
                   f"export threshold {level:g}")
    suggested = _round(lo + (peak - lo) / 2)
    if not lo < suggested < peak:
        suggested = lo + (peak - lo) / 2  # the rounded level left the field's range: keep it exact
    if not lo < suggested < peak:
        return NoSurfaceError(message, "the field is the same everywhere, so no export.density_threshold gives "
                                       "it a surface: train again with another seed", details)
    details["suggested_threshold"] = suggested
    hint = (f"export the trained field again with export.density_threshold = {suggested:g}; a job the service "
            "ran is re-exported without training again (`latentforge reexport JOB --density-threshold "
            f"{suggested:g}`)")
    return NoSurfaceError(message, hint, details)


def _round(value: float) -> float:
    """Three significant figures: what a person reads and types back."""
    return float(f"{value:.3g}")


def sample_grid(density_fn: Field, resolution: int, bound: float, device: torch.device | str) -> np.ndarray:
    """Densities [R, R, R] at the nodes of a regular grid: node (i, j, k) is at −bound + (i, j, k)·step."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    grid = np.empty((resolution,) * 3, np.float32)
    rows = max(1, CHUNK // resolution**2)  # x-slabs of about one chunk each
    for lo in range(0, resolution, rows):
        xs = axis[lo:lo + rows]
        points = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        grid[lo:lo + len(xs)] = evaluate(density_fn, points).reshape(len(xs), resolution, resolution).cpu()
    return grid


def main_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The edge-connected component with the largest area: floaters and specks are dropped."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    keep = labels == np.argmax(np.bincount(labels, weights=mesh.area_faces))
    main = mesh.copy()
    main.update_faces(keep)
    main.remove_unreferenced_vertices()
    return main
