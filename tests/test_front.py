"""The asset's front is the artist's front: view prompts follow the frame the asset lands in (its front
facing −Y, Blender's front view, unless turned), checked with a prior whose front differs from its back."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from shapes import BLUE, RED

from backend.cameras import Cameras
from backend.cli import front_arg, main
from backend.config import merge
from backend.guidance.base import Prompt
from backend.guidance.mixture import MixtureGuidance
from backend.mesh import Frame, Mesh
from backend.tasks.generate import GenerateConfig, generate

CENTER = np.array([1.0, 2.0, 0.5], np.float32)


def cube(color: np.ndarray) -> Mesh:
    b = trimesh.creation.box((1.0, 1.0, 1.0)).subdivide().subdivide()
    v = np.asarray(b.vertices, np.float32) + CENTER
    return Mesh(v, np.asarray(b.faces), vertex_colors=np.tile(color, (len(v), 1)))


def red_front_prior() -> MixtureGuidance:
    """A cube that is red seen from the front and blue from every other view."""
    return MixtureGuidance([cube(RED), cube(BLUE)], ["a cube, front view", "a cube"])


def test_a_frame_turns_about_z_and_back():
    frame = Frame(center=(1.0, 2.0, 0.5), scale=0.5, yaw=90.0)
    world = np.array([[2.0, 2.0, 0.5], [1.0, 1.0, 0.5]], np.float32)  # +X and −Y of the centre
    unit = frame.to_unit(world)
    assert np.allclose(unit, [[0.0, -0.5, 0.0], [-0.5, 0.0, 0.0]], atol=1e-6)  # +X is the front (−Y) now
    assert np.allclose(frame.from_unit(unit), world, atol=1e-6)
    assert [front_arg(a) for a in ("-y", "+x", "x", "+y", "-x", "45")] == [0.0, 90.0, 90.0, 180.0, -90.0, 45.0]


def test_view_captions_split_the_prior_by_camera():
    prior = red_front_prior()
    prior.set_frame(Frame.fit(cube(RED).vertices))
    cams = Cameras.orbit(0.0, [0.0, 90.0, 180.0], 1.3, 50.0)
    members = prior.members(Prompt("a cube"), cams)
    assert members.tolist() == [[True, False, False], [False, True, True]]
    assert prior.members(Prompt("a cube", view_dependent=False), cams).all()  # no views: both everywhere


def redness(mesh: Mesh, texture: np.ndarray, side: np.ndarray) -> float:
    """Mean red minus blue of the baked texture on the result's vertices facing `side` (a world direction)."""
    offset = (mesh.vertices - CENTER) @ side
    on_side = offset > 0.3
    h, w, _ = texture.shape
    uv = mesh.uvs[on_side]
    rgb = texture[np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1),
                  np.clip((uv[:, 0] * w).astype(int), 0, w - 1)].astype(np.float32) / 255
    return float((rgb[:, 0] - rgb[:, 2]).mean())


QUICK = {"resolution": 16, "optim": {"iters": 120, "lr": 5e-3}, "refine": {"iters": 0}, "mesh": {"iters": 0},
         "nerf": {"levels": 6, "log2_table_size": 13, "max_resolution": 128, "hidden_dim": 32},
         "render": {"samples": 24}, "objective": {"guidance_scale": 7.5},
         "export": {"grid_resolution": 48, "texture_size": 64, "max_faces": 4000, "density_threshold": 5.0},
         "loop": {"checkpoint_every": 0}}


@pytest.mark.slow
def test_turning_the_sketch_turns_the_front_colour_with_it(tmp_path):
    sketch = cube(RED).copy_with(vertex_colors=None)
    minus_y, plus_x = np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    found = {}
    for yaw in (0.0, 90.0):
        config = merge(GenerateConfig(prompt="a cube", front_yaw=yaw), QUICK)
        result = generate(config, red_front_prior(), tmp_path / f"{yaw}.glb", sketch=sketch)
        found[yaw] = {"-y": redness(result.mesh, result.texture, minus_y),
                      "+x": redness(result.mesh, result.texture, plus_x)}
        print(f"front turned {yaw:.0f}°: red − blue on the −Y side {found[yaw]['-y']:+.2f}, "
              f"on the +X side {found[yaw]['+x']:+.2f}")
    assert found[0.0]["-y"] > found[0.0]["+x"] + 0.2  # the front colour on Blender's front
    assert found[90.0]["+x"] > found[90.0]["-y"] + 0.2  # and on the side the sketch was turned to


def test_bad_front_is_a_clear_error(tmp_path, capsys):
    args = ["generate", "--prompt", "a cube", "--guidance", "target:missing.glb", "--out", str(tmp_path / "o.glb")]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--front", "up"])
    assert exit_.value.code == 2 and "--front" in capsys.readouterr().err
    assert main([*args, "--front", "nan"]) == 2
    err = capsys.readouterr().err
    assert "front_yaw" in err and "Traceback" not in err
