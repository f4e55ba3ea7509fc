"""The density field's surface as a clean triangle mesh: marching cubes, main component, budget.

The density is sampled coarse to fine: a grid with every `COARSE_STRIDE`-th node first, then the full
resolution only in the coarse cells the surface crosses and their neighbours. Everywhere else the fine
nodes take the side (inside or outside) of their coarse cell, which is uniform there: a coarse cell's
corners all lie on one side, and neighbouring cells share corners. Marching cubes then sees the same
values as on the dense grid wherever the surface is, at a fraction of the field evaluations.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from backend.errors import NoSurfaceError
from backend.fields import Field, chunk_points, evaluate
from backend.mesh import Mesh

COARSE_STRIDE = 4  # fine cells per coarse cell along each axis


class Steps(Protocol):
    """Where the work's sub-steps are reported (the export's progress events, or nowhere)."""

    def start(self, name: str, total: int = 1) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def finish(self) -> None: ...


class Unreported:
    def start(self, name: str, total: int = 1) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def extract_mesh(density_fn: Field, resolution: int, level: float, bound: float, max_faces: int,
                 device: torch.device | str = "cpu", memory_gb: float = 1.0, progress: Steps | None = None) -> Mesh:
    """The largest connected surface where `density_fn` crosses `level`, sampled on a `resolution`³ grid over
    [−bound, bound]³ and simplified to `max_faces`, in the unit frame, no UVs; field queries are chunked under
    `memory_gb` of working memory.

    Faces wind counter-clockwise seen from outside: normals point from high density to low.
    """
    progress = progress or Unreported()
    level = float(level)
    grid, coarse = sample_near_surface(density_fn, resolution, bound, level, device, chunk_points(memory_gb),
                                       progress)
    progress.start("marching cubes")
    verts, faces = _marching_cubes(grid, level, bound, measured=coarse)
    del grid
    progress.finish()
    progress.start("cleanup")
    mesh = clean(verts, faces)
    progress.finish()
    progress.start("simplify")
    mesh = simplify(mesh, max_faces)
    progress.finish()
    return Mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64))


def _marching_cubes(grid: np.ndarray, level: float, bound: float, measured: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`measured`: the densities really evaluated, for the error when there is no surface (a coarse-to-fine
    grid holds stand-in values away from the surface)."""
    dense = grid > level  # NaN compares False: a diverged field counts as empty
    if not dense.any() or dense.all():
        raise no_surface(grid if measured is None else measured, level)
    del dense
    # a layer of empty samples around the grid closes surfaces that reach the volume's faces
    empty = _empty_value(level)
    grid = np.pad(np.nan_to_num(grid, copy=False, nan=empty, neginf=empty), 1, constant_values=empty)
    step = 2 * bound / (grid.shape[0] - 3)
    # 'ascent': the object is where values are high, so faces wind to put normals towards low density
    verts, faces, _, _ = marching_cubes(grid, level, spacing=(step,) * 3, gradient_direction="ascent",
                                        allow_degenerate=False)
    # padded index 1 is grid node 0 at −bound; vertices in the padding layer go onto the volume's faces
    return np.clip(verts - step - bound, -bound, bound), faces


def clean(verts: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """Welded, without degenerate faces (clipping stacks vertices on the volume's faces), main part only."""
    mesh = trimesh.Trimesh(verts, faces)
    mesh.update_faces(mesh.nondegenerate_faces())
    return main_component(mesh)


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


def _empty_value(level: float) -> float:
    return level - max(1.0, abs(level))


def _axis_nodes(resolution: int) -> np.ndarray:
    """Fine-grid indices of the coarse nodes along one axis: every stride-th, and always the last."""
    nodes = np.arange(0, resolution, COARSE_STRIDE)
    return nodes if nodes[-1] == resolution - 1 else np.append(nodes, resolution - 1)


def sample_near_surface(density_fn: Field, resolution: int, bound: float, level: float,
                        device: torch.device | str, chunk: int, progress: Steps | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Densities [R, R, R] at the grid nodes, exact near the level set, a same-side stand-in elsewhere;
    and the coarse pass's densities, all exact."""
    progress = progress or Unreported()
    axis = torch.linspace(-bound, bound, resolution, device=device)
    nodes = _axis_nodes(resolution)
    coarse_axis = axis[torch.as_tensor(nodes, device=axis.device)]
    points = torch.stack(torch.meshgrid(coarse_axis, coarse_axis, coarse_axis, indexing="ij"), -1).reshape(-1, 3)
    progress.start("coarse density", -(-len(points) // chunk))
    coarse = evaluate(density_fn, points, chunk=chunk, on_chunk=lambda _: progress.advance()).cpu().numpy()
    inside = (coarse > level).reshape((len(nodes),) * 3)  # NaN: outside
    del points

    # coarse cells whose corners disagree hold the surface; their neighbours are refined too, so a surface
    # that dips into a cell without changing its corners' sides is still found next to one that does
    corners = [inside[i:len(nodes) - 1 + i, j:len(nodes) - 1 + j, k:len(nodes) - 1 + k]
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    crossed = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)
    crossed = _dilate(crossed)

    # each fine cell's coarse cell; a fine node is refined when any fine cell it is a corner of is
    cell_of = np.minimum(np.arange(resolution - 1) // COARSE_STRIDE, len(nodes) - 2)
    fine_cells = crossed[np.ix_(cell_of, cell_of, cell_of)]
    refine = np.zeros((resolution,) * 3, bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                refine[i:resolution - 1 + i, j:resolution - 1 + j, k:resolution - 1 + k] |= fine_cells
    del fine_cells

    # stand-ins: the side of the nearest coarse node, far from the level so no face is made from them
    nearest = np.abs(np.arange(resolution)[:, None] - nodes[None]).argmin(1)
    margin = max(1.0, abs(level))
    grid = np.where(inside[np.ix_(nearest, nearest, nearest)], np.float32(level + margin),
                    np.float32(level - margin)).astype(np.float32)

    index = np.flatnonzero(refine)
    del refine
    progress.start("surface density", max(1, -(-len(index) // chunk)))
    for lo in range(0, len(index), chunk):
        part = index[lo:lo + chunk]
        ijk = torch.as_tensor(np.stack(np.unravel_index(part, grid.shape), -1), device=axis.device)
        values = evaluate(density_fn, axis[ijk], chunk=chunk)
        grid.reshape(-1)[part] = values.cpu().numpy()
        progress.advance()
    progress.finish()
    return grid, coarse


def _dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one cell in each of the 26 directions."""
    out = mask.copy()
    n = mask.shape
    for axis in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, n[axis] - 1), slice(1, n[axis])
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def sample_grid(density_fn: Field, resolution: int, bound: float, device: torch.device | str,
                chunk: int = 1 << 17) -> np.ndarray:
    """Densities [R, R, R] at every node of a regular grid: node (i, j, k) is at −bound + (i, j, k)·step."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    grid = np.empty((resolution,) * 3, np.float32)
    rows = max(1, chunk // resolution**2)  # x-slabs of about one chunk each
    for lo in range(0, resolution, rows):
        xs = axis[lo:lo + rows]
        points = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        grid[lo:lo + len(xs)] = evaluate(density_fn, points, chunk=chunk).reshape(
            len(xs), resolution, resolution).cpu()
    return grid


def simplify(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """`mesh` with at most `max_faces` faces, by quadric edge collapse.

    fast-simplification first (the quickest); it stalls above the budget on surfaces full of sliver
    triangles, which marching tetrahedra makes where the SDF is near zero at a grid vertex (a 48k-face
    toadstool stopped at 10.9k faces whatever the target), and libigl's QSlim of the whole surface, exact
    to the face, takes over then.
    """
    if len(mesh.faces) <= max_faces:
        return mesh
    simple = mesh.simplify_quadric_decimation(face_count=max_faces)
    if len(simple.faces) <= max_faces:
        return simple
    import igl

    vertices, faces, *_ = igl.qslim(np.asfortranarray(mesh.vertices, np.float64),
                                    np.asfortranarray(mesh.faces, np.int32), max_faces)
    return trimesh.Trimesh(np.asarray(vertices), np.asarray(faces, np.int64))


def main_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The edge-connected component with the largest area: floaters and specks are dropped."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    keep = labels == np.argmax(np.bincount(labels, weights=mesh.area_faces))
    main = mesh.copy()
    main.update_faces(keep)
    main.remove_unreferenced_vertices()
    return main
