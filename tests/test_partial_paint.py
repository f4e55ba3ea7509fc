"""Partial paint: only the selected faces change; the rest of the texture comes back byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapes import RED, face_texels, two_tone_box

from backend.config import merge
from backend.errors import InputError
from backend.export.unwrap import unwrap
from backend.guidance.target import TargetGuidance
from backend.mesh import Mesh
from backend.tasks.face_selection import check_faces, load_faces
from backend.tasks.paint import PaintConfig, paint

REPO = Path(__file__).resolve().parents[1]
QUICK = {"resolution": 32, "iters": 300, "lr": 5e-2, "loop": {"checkpoint_every": 0}}


def upper_faces(mesh: Mesh, margin: float = 0.0) -> np.ndarray:
    return np.flatnonzero(mesh.vertices[mesh.faces].mean(1)[:, 2] > 0.5 + margin)


@pytest.mark.slow
def test_selected_faces_are_painted_and_every_other_texel_is_kept(tmp_path):
    target = two_tone_box()
    mapped, _ = unwrap(target.copy_with(vertex_colors=None), 256)
    texture = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    textured = mapped.copy_with(texture=texture)
    selected = upper_faces(textured)
    result = paint(merge(PaintConfig(prompt="a red top"), QUICK), TargetGuidance(target), textured,
                   tmp_path / "box.glb", faces=selected)
    assert np.array_equal(result.mesh.uvs, textured.uvs) and result.texture.shape == texture.shape
    kept = face_texels(result.mesh, 256, np.setdiff1d(np.arange(len(textured.faces)), selected), erode=0)
    assert np.array_equal(result.texture[kept], texture[kept])
    assert kept.sum() > 0.3 * face_texels(result.mesh, 256, np.arange(len(textured.faces)), erode=0).sum()
    # selected faces away from the seam and the selection's edge reach the target's red
    inner = face_texels(result.mesh, 256, upper_faces(textured, 0.15), erode=3)
    rmse = float(np.sqrt(((result.texture[inner] / 255.0 - RED) ** 2).mean()))
    print(f"partial paint: RMSE {rmse:.3f} to red over {inner.sum()} selected texels, {kept.sum()} kept exactly")
    assert rmse < 0.08
    from PIL import Image

    png = np.asarray(Image.open(result.png_path).convert("RGB"))
    assert np.array_equal(png[kept], texture[kept])


def test_unselected_vertex_colours_are_baked_into_the_new_atlas():
    from backend.tasks.face_selection import select_faces
    from backend.tasks.paint import uv_mapped

    target = two_tone_box()
    mapped, vertex_map = uv_mapped(target, 256)
    selection = select_faces(target, mapped, vertex_map, upper_faces(target), 256)
    lower = face_texels(mapped, 256, np.flatnonzero(target.vertices[target.faces].mean(1)[:, 2] < 0.5), erode=1)
    assert not selection.painted[lower].any()
    expected = np.round(target.vertex_colors[target.faces[~np.isin(np.arange(len(target.faces)),
                                                                   upper_faces(target))]][0, 0] * 255)
    assert np.abs(selection.base[lower].astype(int) - expected).max() <= 1
    # painted colours blend in from the kept side over a few texels, reaching full strength inside
    assert selection.weight[selection.painted].max() == 1.0 and 0 < selection.weight[selection.painted].min() < 1
    bare = selection.compose(np.zeros_like(selection.base))
    assert np.array_equal(bare[~selection.painted], selection.base[~selection.painted])


def test_face_lists_are_read_and_checked(tmp_path):
    (tmp_path / "f.txt").write_text("3, 1\n2 3\n")
    np.save(tmp_path / "f.npy", np.array([4, 0], np.int32))
    assert list(check_faces(load_faces(tmp_path / "f.txt"), 10)) == [1, 2, 3]
    assert list(check_faces(load_faces(tmp_path / "f.npy"), 10)) == [0, 4]
    with pytest.raises(InputError, match="empty"):
        check_faces(np.array([], np.int64), 10)
    with pytest.raises(InputError, match="face index 12 is out of range: the mesh has 10 faces"):
        check_faces(np.array([1, 12]), 10)
    with pytest.raises(InputError, match="must be integers"):
        check_faces(np.array([1.5]), 10)
    (tmp_path / "bad.txt").write_text("1 two 3")
    with pytest.raises(InputError, match="cannot read the face list"):
        load_faces(tmp_path / "bad.txt")


@pytest.mark.parametrize("content", ["", "0 1 99999"], ids=["empty", "out-of-range"])
def test_cli_refuses_a_bad_face_list_and_writes_nothing(tmp_path, content):
    import trimesh

    trimesh.creation.box().export(tmp_path / "box.obj")
    (tmp_path / "faces.txt").write_text(content)
    out = tmp_path / "out" / "box.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "paint", "--mesh", str(tmp_path / "box.obj"),
                           "--prompt", "x", "--guidance", "target:" + str(tmp_path / "box.obj"), "--device", "cpu",
                           "--faces", str(tmp_path / "faces.txt"), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and ("empty" in proc.stderr or "out of range" in proc.stderr)
    assert not out.parent.exists() or not any(out.parent.iterdir())
