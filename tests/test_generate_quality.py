"""Known-answer reconstruction: TargetGuidance of a coloured box off the origin, through the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from shapes import dumbbell, gourd, two_tone_box, two_tone_colour_rmse, voxel_iou

from backend.config import merge
from backend.guidance.target import TargetGuidance
from backend.mesh import load_mesh
from backend.surface_error import surface_error
from backend.tasks.generate import GenerateConfig, generate

# small enough for a CPU: 32² renders, a reduced hash grid, 400 steps
FAST = {
    "resolution": 32,
    "optim": {"iters": 400, "lr": 5e-3},
    "refine": {"iters": 0},
    "mesh": {"iters": 0},
    "nerf": {"levels": 8, "log2_table_size": 15, "max_resolution": 256},
    "render": {"samples": 32},
    # half the default samples per ray means twice the spacing, so half the density for the same opacity
    "export": {"grid_resolution": 96, "texture_size": 256, "max_faces": 20000, "density_threshold": 5.0},
    "loop": {"checkpoint_every": 0},
}
# the concave block's budget: 140 NeRF steps and 60 mesh-refinement steps at 128² on a 32³ grid
CONCAVE = {**FAST, "optim": {"iters": 140, "lr": 5e-3}, "mesh": {"iters": 60, "resolution": 128, "grid_resolution": 32}}
# the mesh stage's known answers: 100 NeRF steps, then 50 mesh-refinement steps at 128²
MESH_KNOWN_ANSWER = {**FAST, "optim": {"iters": 100, "lr": 5e-3},
                     "mesh": {"iters": 50, "resolution": 128, "grid_resolution": 48},
                     "export": {**FAST["export"], "texture_size": 64, "max_faces": 8000}}


@pytest.mark.slow
def test_generate_reconstructs_a_known_coloured_shape(tmp_path):
    target = two_tone_box()
    config = merge(GenerateConfig(prompt="a two-tone box"), FAST)
    result = generate(config, TargetGuidance(target), tmp_path / "box.glb")

    iou = voxel_iou(result.mesh, target)
    # the file on disk holds the same asset, in the target's own frame
    written = load_mesh(result.glb_path)
    assert np.allclose(written.vertices.min(0), result.mesh.vertices.min(0), atol=1e-4)
    rmse = two_tone_colour_rmse(result.mesh, result.texture)
    psnr = 20 * np.log10(1.0 / max(rmse, 1e-8))
    print(f"known-answer box: voxel IoU {iou:.3f}, colour RMSE {rmse:.3f} (PSNR {psnr:.1f} dB)")
    assert iou >= 0.8
    assert rmse <= 0.1, f"baked colours are {rmse:.3f} RMSE away from the target's"


@pytest.mark.slow
def test_mesh_stage_improves_a_concave_known_shape_in_the_same_step_budget(tmp_path):
    """An L-shaped block off the origin: 200 NeRF steps against 140 NeRF + 60 mesh-refinement steps."""
    from shapes import notched_block

    target = notched_block()
    results = {}
    for name, mesh_iters in (("without", 0), ("with", 60)):
        config = merge(GenerateConfig(prompt="an L-shaped block"), {**CONCAVE, "optim": {
            "iters": 200 - mesh_iters, "lr": 5e-3}, "mesh": {**CONCAVE["mesh"], "iters": mesh_iters}})
        result = generate(config, TargetGuidance(target), tmp_path / f"{name}.glb")
        results[name] = (surface_error(result.mesh, target), result)
    for name, (error, result) in results.items():
        print(f"{name} mesh stage: {error.describe()}, {result.charts} UV charts, {len(result.mesh.faces)} faces")
    error, result = results["with"]
    assert error.iou >= 0.85 and error.iou > results["without"][0].iou
    welded = trimesh.Trimesh(result.mesh.vertices, result.mesh.faces)
    welded.merge_vertices()
    assert welded.is_watertight and len(welded.split(only_watertight=False)) == 1
    assert result.charts <= 150 and result.normal_map_path.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("shape, iou_before", [(gourd, 0.979), (dumbbell, 0.945)], ids=["gourd", "dumbbell"])
def test_mesh_stage_gives_smooth_known_shapes_smooth_surfaces(shape, iou_before, tmp_path):
    """Smooth references through the mesh stage: the surface shades like the reference's (normals a few degrees
    off) at the volume the same run reached before (iou_before). Before the stage followed Magic3D's refinement
    (t up to 0.98, the latent stage's cameras, weak smoothing), this run gave the gourd normals 10.3° off at IoU
    0.979 and the dumbbell (balls on a rod a third their radius) 13.6° at 0.945."""
    target = shape()
    config = merge(GenerateConfig(prompt="a smooth shape"), MESH_KNOWN_ANSWER)
    result = generate(config, TargetGuidance(target), tmp_path / "smooth.glb")
    error = surface_error(result.mesh, target)
    print(f"{shape.__name__} through the mesh stage: {error.describe()}, {result.charts} UV charts, "
          f"{len(result.mesh.faces)} faces")
    assert error.normal_mean_deg <= 8.0
    assert error.iou >= iou_before
