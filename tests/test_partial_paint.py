"""Partial paint: only the selected faces change; the rest of the texture comes back byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.ndimage import binary_dilation
from shapes import RED, face_texels, two_tone_box

from backend.config import merge
from backend.errors import InputError
from backend.export.glb import glb_bytes
from backend.export.unwrap import unwrap
from backend.guidance.target import TargetGuidance
from backend.mesh import Mesh
from backend.tasks.appearance import Appearance
from backend.tasks.face_selection import check_faces, load_faces, padding_for
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
    png = np.asarray(Image.open(result.png_path).convert("RGB"))
    assert np.array_equal(png[kept], texture[kept])


def test_unselected_vertex_colours_are_baked_into_the_new_atlas():
    from backend.tasks.face_selection import select_faces
    from backend.tasks.paint import uv_mapped

    target = two_tone_box()
    mapped, vertex_map = uv_mapped(target, 256)
    selection = select_faces(target, mapped, upper_faces(target), 256)
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


def polygon_footprint(mesh: Mesh, faces: np.ndarray, size: int) -> np.ndarray:
    """[size, size] the texels any of `faces` touches, found apart from the renderer: each triangle's
    texel-space polygon filled by scikit-image, grown by one texel (a texel a triangle only clips)."""
    from skimage.draw import polygon

    out = np.zeros((size, size), bool)
    for tri in mesh.uvs[mesh.faces[faces]]:
        rows, cols = polygon((1 - tri[:, 1]) * size - 0.5, tri[:, 0] * size - 0.5, (size, size))
        out[rows, cols] = True
        corner_rows = np.clip(np.round((1 - tri[:, 1]) * size - 0.5).astype(int), 0, size - 1)
        out[corner_rows, np.clip(np.round(tri[:, 0] * size - 0.5).astype(int), 0, size - 1)] = True
    return binary_dilation(out)


@pytest.mark.slow
def test_cli_faces_keep_every_texel_outside_the_selection_gutters_included(tmp_path):
    """A textured mesh (a noise texture, so any rewritten texel shows) through `latentforge paint --faces`:
    outside the selected faces' footprint grown by the stated padding, the texture is byte-identical,
    the gutters between charts included."""
    size = 256
    mapped, _ = unwrap(two_tone_box().copy_with(vertex_colors=None), size)
    texture = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    (tmp_path / "box.glb").write_bytes(glb_bytes(mapped, texture))
    selected = upper_faces(mapped)
    (tmp_path / "faces.txt").write_text(" ".join(map(str, selected)))
    (tmp_path / "quick.json").write_text('{"resolution": 32, "iters": 40, "loop": {"checkpoint_every": 0}}')
    out = tmp_path / "out" / "box.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "paint", "--mesh", str(tmp_path / "box.glb"),
                           "--prompt", "a red top", "--guidance", f"target:{tmp_path / 'box.glb'}", "--device", "cpu",
                           "--faces", str(tmp_path / "faces.txt"), "--config", str(tmp_path / "quick.json"),
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = np.asarray(Image.open(out.with_suffix(".png")).convert("RGB"))
    footprint = polygon_footprint(mapped, selected, size)
    grown = binary_dilation(footprint, iterations=padding_for(size))
    gutter = ~polygon_footprint(mapped, np.arange(len(mapped.faces)), size)
    changed = (result != texture).any(-1)
    print(f"--faces: {changed.sum()} texels changed, {(changed & ~grown).sum()} of them outside the selection's "
          f"footprint grown by {padding_for(size)}; {(changed & gutter).mean() / gutter.mean():.1%} of the gutter "
          f"texels changed ({(gutter & ~grown).sum()} gutter texels away from the selection, all kept)")
    assert not (changed & ~grown).any()
    assert (gutter & ~grown).sum() > 0.1 * size * size  # the check covers a real gutter
    assert changed[footprint].mean() > 0.5  # and the selection was painted


def udim_box(size: int) -> tuple[Mesh, np.ndarray]:
    """The two-tone box with its lower faces in UDIM tile 1001 and its upper ones in tile 1002 (each face
    with its own corners), and the upper faces."""
    mapped, _ = unwrap(two_tone_box().copy_with(vertex_colors=None), size)
    corners = mapped.faces.reshape(-1)
    faces = np.arange(len(corners)).reshape(-1, 3)
    upper = upper_faces(mapped)
    uvs = mapped.uvs[corners].reshape(-1, 3, 2).copy()
    uvs[upper, :, 0] += 1.0
    return Mesh(mapped.vertices[corners], faces, uvs=uvs.reshape(-1, 2)), upper


@pytest.mark.slow
def test_udim_tiles_are_painted_one_image_each_and_an_untouched_tile_is_kept(tmp_path):
    size = 64
    mesh, upper = udim_box(size)
    rng = np.random.default_rng(1)
    tiles = {1001: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             1002: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)}
    look = Appearance(np.zeros(len(mesh.faces), np.int64), np.array([0]), np.full((1, 3), 0.5, np.float32),
                      [tiles], image_uvs=mesh.uvs[mesh.faces])
    selected = upper[:len(upper) // 2]
    result = paint(merge(PaintConfig(prompt="a red top"), {**QUICK, "iters": 40}), TargetGuidance(two_tone_box()),
                   mesh, tmp_path / "box.glb", faces=selected, appearance=look)
    assert sorted(result.tiles) == [1001, 1002] and np.array_equal(result.mesh.uvs[result.mesh.faces],
                                                                     mesh.uvs[mesh.faces])
    out = {t: np.asarray(Image.open(p).convert("RGB")) for t, p in result.tiles.items()}
    assert np.array_equal(out[1001], tiles[1001])  # no selected face lies in tile 1001
    local = mesh.copy_with(uvs=mesh.uvs - np.floor(mesh.uvs[mesh.faces].mean(1)).repeat(3, 0))
    grown = binary_dilation(polygon_footprint(local, selected, size), iterations=padding_for(size))
    changed = (out[1002] != tiles[1002]).any(-1)
    print(f"UDIM: tile 1001 byte-identical; tile 1002: {changed.sum()} texels changed, "
          f"{(changed & ~grown).sum()} outside the selection's footprint")
    assert changed.any() and not (changed & ~grown).any()


def test_the_command_line_refuses_udim_tiles_and_names_the_addon(tmp_path):
    mesh, _ = udim_box(64)
    trimesh.Trimesh(mesh.vertices, mesh.faces, visual=trimesh.visual.TextureVisuals(uv=mesh.uvs),
                    process=False).export(tmp_path / "udim.obj")
    out = tmp_path / "out" / "box.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "paint", "--mesh", str(tmp_path / "udim.obj"),
                           "--prompt", "x", "--guidance", "target:" + str(tmp_path / "udim.obj"), "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "UDIM tiles 1001, 1002" in proc.stderr and "LatentForge add-on" in proc.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())
