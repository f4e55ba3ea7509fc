"""Sketch-Shape guidance: winding-number occupancy, the looseness weight, and a known-answer run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from shapes import voxel_iou
from test_generate_quality import FAST

from backend.config import merge
from backend.errors import ConfigError, InputError
from backend.guidance.target import TargetGuidance
from backend.mesh import Mesh, load_mesh
from backend.sketch import SketchConfig, SketchShape
from backend.tasks.generate import GenerateConfig, generate
from backend.winding import surface_distance, winding_number

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "backend" / "examples" / "toadstool"


def primitives(*meshes: trimesh.Trimesh) -> Mesh:
    merged = trimesh.util.concatenate(list(meshes))
    return Mesh(np.asarray(merged.vertices, np.float32), np.asarray(merged.faces, np.int64))


def test_winding_number_of_overlapping_primitives_and_an_open_mesh():
    a = trimesh.creation.box((1, 1, 1))
    b = trimesh.creation.icosphere(2, radius=0.6)
    b.apply_translation([0.5, 0, 0])
    both = primitives(a, b)
    pts = np.array([[0.0, 0, 0], [0.45, 0, 0], [0.9, 0, 0], [2.0, 0, 0], [-0.45, 0.45, 0.45]])
    w = winding_number(pts, both.vertices, both.faces)
    # overlaps count twice (winding 2); "inside" is w > 0.5 either way
    assert np.allclose(w, [2, 2, 1, 0, 1], atol=0.05)
    # a box with its top removed still encloses its centre about half-way (open, not garbage)
    box = trimesh.creation.box((1, 1, 1))
    keep = box.face_normals[:, 2] < 0.5
    open_box = Mesh(np.asarray(box.vertices, np.float32), np.asarray(box.faces[keep]))
    w_open = winding_number(np.array([[0.0, 0, -0.3], [0.0, 0, 3.0]]), open_box.vertices, open_box.faces)
    assert 0.5 < w_open[0] < 1.0 and abs(w_open[1]) < 0.05


def test_distance_and_loss_weight_are_zero_on_the_surface_and_one_far_away():
    box = trimesh.creation.box((1, 1, 1))
    sketch = Mesh(np.asarray(box.vertices, np.float32), np.asarray(box.faces))
    d = surface_distance(np.array([[0.5, 0.0, 0.0], [0.0, 0, 0], [3.0, 0, 0]]), sketch.vertices, sketch.faces)
    assert np.allclose(d, [0.0, 0.5, 2.5], atol=1e-6)
    shape = SketchShape(sketch, SketchConfig(looseness=0.3, grid_resolution=64))
    # the sketch is scaled into radius 0.7: its surface is where the unit-frame |x| = 0.7/√3
    half = 0.7 / np.sqrt(3)
    pts = torch.tensor([[half, 0.0, 0.0], [0.0, 0.0, 0.0], [0.95, 0.0, 0.0]], dtype=torch.float32)
    inside, dist = shape.lookup(pts)
    weight = 1 - torch.exp(-dist**2 / (2 * 0.3**2))
    assert inside[1] == 1 and inside[2] == 0
    assert weight[0] < 0.01 and weight[2] > 0.35
    far = torch.tensor([[0.99, 0.99, 0.99]])
    _, d_far = shape.lookup(far)
    assert 1 - torch.exp(-d_far**2 / (2 * 0.05**2)) > 0.999  # → 1 far from the surface
    # the loss pushes density up inside and down outside
    sig = torch.full((3,), 5.0, requires_grad=True)
    shape.loss(pts, sig).backward()
    assert sig.grad[1] < 0 < sig.grad[2]


@pytest.mark.parametrize(
    "vertices, faces, message",
    [
        (np.zeros((3, 3)), np.zeros((0, 3), int), "no triangles"),
        (np.array([[0, 0, 0], [1, np.nan, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), "NaN or infinite"),
        (np.array([[0, 0, 0], [1, np.inf, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), "NaN or infinite"),
        (np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]), np.array([[0, 1, 2]]), "degenerate"),
        (np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 7]]), "do not exist"),
    ],
)
def test_bad_sketches_are_refused_before_any_work(vertices, faces, message, tmp_path):
    sketch = Mesh(np.asarray(vertices, np.float32), np.asarray(faces))
    with pytest.raises(InputError, match=message):
        generate(merge(GenerateConfig(prompt="x"), FAST), TargetGuidance(load_mesh(EXAMPLE / "target.glb")),
                 tmp_path / "x.glb", sketch=sketch)
    assert list(tmp_path.iterdir()) == []


def test_huge_sketch_is_refused_with_the_limit_named(monkeypatch):
    import backend.mesh as mesh_module

    monkeypatch.setattr(mesh_module, "MAX_FACES", 1000)
    sphere = trimesh.creation.icosphere(4)  # 5120 faces
    with pytest.raises(InputError, match="over the limit of 1,000"):
        mesh_module.validate_mesh(Mesh(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces)),
                                  "sketch", max_faces=mesh_module.MAX_FACES)


def test_the_sketch_fills_latent_nerf_s_radius():
    """Latent-NeRF scales the sketch into a sphere of radius 0.7 of the unit volume; σ_S is in those units."""
    bar = trimesh.creation.box((3.0, 0.4, 0.2))
    bar.apply_translation([10.0, -4.0, 2.0])
    shape = SketchShape(Mesh(np.asarray(bar.vertices, np.float32), np.asarray(bar.faces)),
                        SketchConfig(grid_resolution=16))
    assert abs(float(np.linalg.norm(shape.vertices, axis=1).max()) - 0.7) < 1e-5
    assert abs(float(np.abs(shape.vertices).max(0)[0]) - 0.7 * 1.5 / np.linalg.norm([1.5, 0.2, 0.1])) < 1e-5


def test_looseness_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="looseness"):
        SketchConfig(looseness=0.0).validate()


@pytest.mark.slow
def test_sketch_guided_generation_recovers_the_shape_where_the_sketch_was(tmp_path):
    # the toadstool and its blockout, scaled ×3 and moved far from the origin
    target = load_mesh(EXAMPLE / "target.glb")
    sketch = load_mesh(EXAMPLE / "sketch.glb")
    scale, offset = 3.0, np.array([5.0, 2.0, -1.0], np.float32)
    target = target.copy_with(vertices=target.vertices * scale + offset)
    sketch = sketch.copy_with(vertices=sketch.vertices * scale + offset)
    config = merge(GenerateConfig(prompt="a toadstool"), {**FAST, "sketch": {"grid_resolution": 96}})
    result = generate(config, TargetGuidance(target), tmp_path / "t.glb", sketch=sketch)
    sketch_iou, iou = voxel_iou(sketch, target), voxel_iou(result.mesh, target)
    print(f"sketch-guided toadstool: IoU {iou:.3f} (the sketch itself: {sketch_iou:.3f})")
    assert iou >= 0.8 and iou >= sketch_iou
