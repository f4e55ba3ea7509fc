"""A reference image's mask, its bad inputs on the command line and on the wire, and paint's depth-tested
projection (fast: no optimisation here; the known answers are in test_image_known_answers.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from image_scenes import boxes_behind, coloured, image_of
from PIL import Image

from backend.catalog import MAX_REFERENCE_SIDE
from backend.cli import main
from backend.errors import InputError
from backend.reference import ImageConfig, ReferenceImage, decode_image, png_of, read_image
from backend.service import protocol, tasks

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "backend" / "examples" / "toadstool" / "target.glb"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def disc(size: int = 64, colour=(200, 30, 30), background=(255, 255, 255)) -> np.ndarray:
    """An RGB image: a disc of `colour` on `background`, with a ring of the background's colour inside it."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(x, y)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = background
    out[r < size * 0.35] = colour
    out[(r > size * 0.15) & (r < size * 0.2)] = background  # enclosed: part of the object, not background
    return out


def test_alpha_is_the_mask_and_without_it_the_border_colour_connected_to_the_border_is_background():
    rgb = disc()
    from_border = ReferenceImage.from_pixels(rgb)
    y, x = np.mgrid[:64, :64] - 31.5
    inside = np.hypot(x, y) < 64 * 0.35
    assert np.array_equal(from_border.mask > 0, inside)  # the enclosed white ring stays object
    alpha = np.zeros((64, 64), np.uint8)
    alpha[10:30, 20:50] = 255
    from_alpha = ReferenceImage.from_pixels(np.dstack([rgb, alpha]))
    assert np.array_equal(from_alpha.mask, alpha)
    # JPEG-like noise in the background stays background within the tolerance (0.1: 25 levels), not past it
    noisy = rgb.astype(np.int16)
    noisy[~inside] -= np.random.default_rng(0).integers(0, 20, size=(int((~inside).sum()), 3)).astype(np.int16)
    assert np.array_equal(ReferenceImage.from_pixels(noisy.astype(np.uint8)).mask > 0, inside)
    # an opaque alpha channel says nothing: the border's colour decides
    assert np.array_equal(ReferenceImage.from_pixels(np.dstack([rgb, np.full((64, 64), 255, np.uint8)])).mask > 0,
                          inside)


def test_a_wide_image_is_padded_to_a_square_of_background():
    wide = np.full((20, 60, 3), 255, np.uint8)
    wide[5:15, 25:35] = (0, 0, 255)
    image = ReferenceImage.from_pixels(wide)
    assert image.rgb.shape == (60, 60, 3) and image.mask.shape == (60, 60)
    assert image.mask[20:40].any() and not image.mask[:20].any() and not image.mask[40:].any()
    rgb, mask = image.tensors(30)
    assert rgb.shape == (3, 30, 30) and mask.shape == (30, 30) and float(mask.max()) == 1.0


def test_files_and_png_bytes_round_trip_with_their_mask(tmp_path):
    rgb = disc()
    jpeg = tmp_path / "concept.jpg"
    Image.fromarray(rgb).save(jpeg, quality=95)
    from_jpeg = read_image(jpeg)
    exact = ReferenceImage.from_pixels(rgb).mask > 0
    assert ((from_jpeg.mask > 0) != exact).sum() < 40  # JPEG's ringing moves the outline by a pixel at most
    again = ReferenceImage.from_pixels(decode_image(png_of(from_jpeg)))  # what `submit --image` sends
    assert np.array_equal(again.mask, from_jpeg.mask) and np.array_equal(again.rgb, from_jpeg.rgb)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width × height (its data is one empty row: nothing is decoded that far)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("task", ["generate", "paint"])
@pytest.mark.parametrize(("image", "extra", "message"), [
    ("missing.png", [], "'{tmp}/missing.png' does not exist"),
    ("notes.png", [], "is not an image (PNG or JPEG)"),
    ("blank.png", [], "mask is empty"),
    ("transparent.png", [], "mask is empty: its alpha is transparent"),
    ("noise.png", [], "mask covers the whole frame"),
    ("opaque.png", [], "mask covers the whole frame"),
    ("huge.png", [], f"over the limit of {MAX_REFERENCE_SIDE} a side"),
    ("disc.png", ["--prompt", ""], "a reference image needs a prompt too"),
    (None, ["--image-view", "left"], "no --image is given"),
    ("disc.png", ["--image-view", "30,95"], "the elevation in [-90, 90]"),
])
def test_bad_images_are_refused_with_exit_2_and_nothing_written(task, image, extra, message, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "blank.png").write_bytes(png(np.full((32, 32, 3), 128, np.uint8)))
    (tmp_path / "transparent.png").write_bytes(png(np.zeros((32, 32, 4), np.uint8)))
    (tmp_path / "noise.png").write_bytes(png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    opaque = np.dstack([disc(32), np.full((32, 32), 254, np.uint8)])  # alpha present, and everywhere object
    (tmp_path / "opaque.png").write_bytes(png(opaque))
    (tmp_path / "huge.png").write_bytes(huge_png_header(MAX_REFERENCE_SIDE + 1, 8))
    (tmp_path / "disc.png").write_bytes(png(disc()))
    out = tmp_path / "o.glb"
    args = [task, "--prompt", "a toadstool", "--guidance", f"target:{TARGET}", "--device", "cpu", "--out", str(out)]
    if task == "paint":
        args += ["--mesh", str(TARGET)]
    if image is not None:
        args += ["--image", str(tmp_path / image)]
    try:
        code = main([*args, *extra])
    except SystemExit as exc:  # argparse's own errors exit 2 with usage
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert message.format(tmp=tmp_path) in err, err
    assert not out.exists() and not out.with_suffix(".png").exists()


def submit_frames(blobs: dict[str, bytes], **fields: object) -> list:
    return protocol.encode("submit", {"id": "r1", "task": "generate", "prompt": "p", **fields}, None, blobs)


def test_the_wire_carries_a_png_and_its_view_and_refuses_anything_else():
    sent = png(disc())
    message = protocol.decode(submit_frames({"image": sent}, image_azimuth=30.0, image_elevation=15.0))
    assert message.blobs["image"] == sent and message.fields["image_azimuth"] == 30.0
    spec = tasks.JobSpec.from_submit(message.fields, message.arrays, message.blobs)
    config = spec.config()
    assert (config.image.azimuth, config.image.elevation) == (30.0, 15.0)
    assert np.array_equal(spec.inputs()["image"], disc())  # decoded for the task's entry points
    refusals = [
        (submit_frames({"image": b"GIF89a" + bytes(40)}), "bad_input", "not a PNG"),
        (submit_frames({"image": huge_png_header(MAX_REFERENCE_SIDE + 1, 4)}), "too_large", "over the limit"),
        (submit_frames({}, image_azimuth=10.0), "bad_field", "carries no 'image' blob"),
        (submit_frames({"image": sent}, image_elevation=91.0), "bad_field", "image_elevation"),
        (submit_frames({"picture": sent}), "bad_frames", "no blob named 'picture'"),
    ]
    for frames, code, words in refusals:
        with pytest.raises(protocol.ProtocolError, match=words) as caught:
            protocol.decode(frames)
        assert caught.value.code == code


def test_the_service_refuses_an_image_it_cannot_use_before_the_job_exists():
    blank = tasks.JobSpec("generate", {"task": "generate", "prompt": "p"}, blobs={"image": png(np.zeros((8, 8, 4),
                                                                                                         np.uint8))})
    with pytest.raises(InputError, match="mask is empty"):
        tasks.check_spec(blank)
    truncated = tasks.JobSpec("paint", {"task": "paint", "prompt": "p"}, blobs={"image": png(disc())[:60]})
    with pytest.raises(InputError, match="cannot be decoded|not an image"):
        truncated.inputs()


def test_projection_reaches_only_the_texels_the_view_sees():
    """A box with a smaller box hidden right behind it (inside the image's mask, where a projection without a
    depth test would paint it): only the big box's faces that turn to the view get weight."""
    import torch
    from shapes import face_texels

    from backend.export.unwrap import unwrap
    from backend.tasks.paint_projection import project_image

    view = ImageConfig(azimuth=30.0, elevation=20.0)
    scene = boxes_behind(view)
    image = ReferenceImage.from_pixels(image_of(coloured(scene.mesh, scene.colours), scene.frame, view, 96))
    mapped, _ = unwrap(scene.mesh, 128, padding=4)
    projection = project_image(torch.as_tensor(scene.frame.to_unit(mapped.vertices)), torch.as_tensor(mapped.faces),
                               torch.as_tensor(mapped.uvs), 128, image, view.camera())
    for faces, expected in ((scene.seen, 1.0), (scene.hidden, 0.0)):
        texels = face_texels(mapped, 128, faces, erode=int(expected))  # hidden faces' edges too
        weight = projection.weight[texels]
        print(f"projection weight on {len(faces)} faces that should have {expected}: {weight.min():.3f} to "
              f"{weight.max():.3f}, mean {weight.mean():.3f}")
        assert texels.any()
        if expected == 0:  # not one texel of a hidden face
            assert (weight == 0).all()
        else:  # at the image's outline the mask's own antialiasing lowers a texel's weight
            assert weight.mean() >= 0.97 and (weight > 0).mean() >= 0.99
    for face in scene.seen:  # the image's colours, face by face
        texels = face_texels(mapped, 128, np.array([face]), erode=1)
        error = np.abs(projection.colour[texels] - scene.colours[face]).max(-1)
        assert np.median(error) < 0.02, (face, float(np.median(error)))


def test_a_partial_paint_projects_the_image_onto_its_own_faces_only():
    from backend.config import merge
    from backend.guidance.target import TargetGuidance
    from backend.tasks.paint import PaintConfig, prepare_paint

    view = ImageConfig(azimuth=30.0, elevation=20.0)
    scene = boxes_behind(view)
    image = ReferenceImage.from_pixels(image_of(coloured(scene.mesh, scene.colours), scene.frame, view, 96))
    config = merge(PaintConfig(prompt="a box", image=view), {"resolution": 16, "texture_size": 128})
    guidance = TargetGuidance(coloured(scene.mesh, scene.colours))
    whole = prepare_paint(config, guidance, scene.mesh, image=image)
    chosen = scene.seen[:1]  # one triangle of the front
    partial = prepare_paint(config, guidance, scene.mesh, faces=chosen, image=image)
    outside = ~partial.selection.painted
    assert (partial.projection.weight[outside] == 0).all()
    assert partial.projection.weight.sum() > 0 and whole.projection.weight[outside].sum() > 0


def test_every_stage_fits_the_image_on_a_tiny_stable_diffusion(tiny_sd_dir, tmp_path, capsys):
    """Through the command line with Stable Diffusion's own encoder (a tiny random one): the reference view's
    losses are reported in the latent, RGB refinement and mesh stages, and paint's in both of its stages."""
    import json

    from tiny_config import TINY

    image = tmp_path / "concept.png"
    image.write_bytes(png(disc()))
    generate_config = tmp_path / "generate.json"
    generate_config.write_text(json.dumps({**TINY, "optim": {"iters": 4}, "refine": {"iters": 2, "resolution": 32},
                                           "mesh": {"iters": 2, "resolution": 32, "grid_resolution": 12},
                                           "loop": {"checkpoint_every": 0}}))
    paint_config = tmp_path / "paint.json"
    paint_config.write_text(json.dumps({"resolution": 16, "iters": 3, "texture_size": 64, "finetune_iters": 2,
                                        "finetune_resolution": 32}))
    runs = {"generate": ["--config", str(generate_config), "--image-view", "right"],
            "paint": ["--config", str(paint_config), "--mesh", str(TARGET), "--image-view", "20,10"]}
    for task, args in runs.items():
        out = tmp_path / f"{task}.glb"
        code = main([task, "--prompt", "a toadstool", "--model", str(tiny_sd_dir), "--device", "cpu", "--image",
                     str(image), "--out", str(out), *args])
        err = capsys.readouterr().err
        assert code == 0 and out.is_file(), err
        stages = ("latent", "rgb_refine", "mesh") if task == "generate" else ("paint", "rgb_finetune")
        for stage in stages:  # each stage's bar shows its losses, the image's among them
            shown = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(f"{stage}:")]
            assert shown and "image" in shown[-1], (stage, shown[-1:])


def test_with_a_sketch_the_image_is_moved_and_scaled_onto_its_outline():
    """A small disc in a corner of the image, a tall blockout: the job's reference image has the disc where the
    blockout's outline is in that view, at the outline's area."""
    import trimesh

    from backend.config import merge
    from backend.guidance.target import TargetGuidance
    from backend.mesh import Mesh
    from backend.sketch import SketchShape
    from backend.tasks.generate import GenerateConfig, prepare_generate
    from backend.tasks.reference_view import silhouette_box

    pixels = np.full((96, 96, 3), 255, np.uint8)
    y, x = np.mgrid[:96, :96]
    pixels[np.hypot(x - 20, y - 70) < 10] = (30, 30, 200)
    box = trimesh.creation.box((0.4, 0.4, 1.6))
    sketch = Mesh(np.asarray(box.vertices, np.float32) + (3.0, 1.0, 0.5), np.asarray(box.faces))
    target = Mesh(sketch.vertices, sketch.faces, vertex_colors=np.ones_like(sketch.vertices) * 0.5)
    view = ImageConfig(azimuth=20.0)
    config = merge(GenerateConfig(prompt="a post", image=view), {"resolution": 16, "optim": {"iters": 1},
                                                                 "refine": {"iters": 0}, "mesh": {"iters": 0},
                                                                 "sketch": {"grid_resolution": 16}})
    job = prepare_generate(config, TargetGuidance(target), sketch=sketch, image=ReferenceImage.from_pixels(pixels))
    fitted = job.stages[0].step.reference.image
    rows, cols = np.nonzero(fitted.mask > 127)
    placed = SketchShape(sketch, config.sketch, config.nerf.bound)
    top, left, bottom, right = (v * 96 for v in silhouette_box(placed.vertices, placed.faces, view))
    assert abs((rows.min() + rows.max() + 1) / 2 - (top + bottom) / 2) <= 1.5
    assert abs((cols.min() + cols.max() + 1) / 2 - (left + right) / 2) <= 1.5
    area = (rows.max() + 1 - rows.min()) * (cols.max() + 1 - cols.min())
    assert abs(area / ((bottom - top) * (right - left)) - 1) < 0.15
    unfitted = merge(config, {"image": {"fit_sketch": False}})
    as_framed = prepare_generate(unfitted, TargetGuidance(target), sketch=sketch,
                                 image=ReferenceImage.from_pixels(pixels)).stages[0].step.reference.image
    assert np.array_equal(as_framed.mask, ReferenceImage.from_pixels(pixels).mask)
