"""Export: marching cubes, main component, simplification, UV bake and GLB/PNG files, on analytic fields."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.errors import ConfigError, InputError
from backend.export import ExportConfig, export_asset, write_glb
from backend.isosurface import extract_mesh
from backend.mesh import Frame, Mesh, from_file_frame

THRESHOLD = 10.0
RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def sphere_density(center: tuple[float, float, float], radius: float,
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A density that crosses THRESHOLD exactly on the sphere, rising linearly inwards."""
    c = torch.tensor(center)

    def density(x: torch.Tensor) -> torch.Tensor:
        return THRESHOLD + 50.0 * (radius - (x - c.to(x)).norm(dim=-1))

    return density


def red_above(z: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def color(x: torch.Tensor) -> torch.Tensor:
        return torch.where((x[:, 2:3] > z), torch.tensor(RED).to(x), torch.tensor(BLUE).to(x))

    return color


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel at `uv` with trimesh's convention: v = 0 is the image's bottom row."""
    h, w = texture.shape[:2]
    cols = np.clip(np.floor(uv[:, 0] * w), 0, w - 1).astype(int)
    rows = np.clip(np.floor((1 - uv[:, 1]) * h), 0, h - 1).astype(int)
    return texture[rows, cols]


def config(**changes: object) -> ExportConfig:
    return ExportConfig(**{"grid_resolution": 64, "texture_size": 128, "density_threshold": THRESHOLD,
                           "max_faces": 20_000, **changes})


@pytest.fixture(scope="module")
def sphere_export(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - tuple of many things
    center, radius = (0.1, 0.0, -0.05), 0.5
    frame = Frame(center=(2.0, -1.0, 0.5), scale=0.25)
    out = tmp_path_factory.mktemp("export") / "nested" / "asset.glb"
    events: list = []
    result = export_asset(sphere_density(center, radius), red_above(center[2]), frame, config(), out,
                          on_event=events.append)
    return result, frame, center, radius, events


def test_glb_loads_with_uvs_and_texture_in_input_frame(sphere_export) -> None:  # noqa: ANN001
    result, frame, center, radius, _ = sphere_export
    loaded = trimesh.load(result.glb_path, force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.uv is not None
    assert loaded.visual.material.baseColorTexture is not None
    # the file is y-up; back in the internal frame the vertices sit on the sphere in input coordinates
    vertices = from_file_frame(np.asarray(loaded.vertices))
    world_center = frame.from_unit(np.array([center]))[0]
    voxel = 2.0 / (64 - 1) / frame.scale
    error = np.abs(np.linalg.norm(vertices - world_center, axis=1) - radius / frame.scale)
    assert error.max() < 1.5 * voxel
    np.testing.assert_allclose(result.mesh.vertices.min(0), vertices.min(0), atol=1e-4)
    assert result.mesh.uvs is not None and result.mesh.uvs.shape == (len(result.mesh.vertices), 2)


def test_faces_point_outward(sphere_export) -> None:  # noqa: ANN001
    result, frame, center, *_ = sphere_export
    mesh = trimesh.Trimesh(result.mesh.vertices, result.mesh.faces, process=False)
    outward = mesh.triangles_center - frame.from_unit(np.array([center]))[0]
    assert (np.einsum("ij,ij->i", mesh.face_normals, outward) > 0).all()


def test_baked_texture_matches_colour_field_at_vertex_uvs(sphere_export) -> None:  # noqa: ANN001
    result, frame, center, _, _ = sphere_export
    loaded = trimesh.load(result.glb_path, force="mesh")
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    unit = frame.to_unit(from_file_frame(np.asarray(loaded.vertices)))
    expected = np.where(unit[:, 2:3] > center[2], np.array(RED), np.array(BLUE)) * 255
    away = np.abs(unit[:, 2] - center[2]) > 0.06  # two voxels from the colour boundary
    got = sample_texture(texture, np.asarray(loaded.visual.uv))
    match = (np.abs(got.astype(float) - expected) < 64).all(1)
    assert match[away].mean() > 0.95
    # trimesh's own UV lookup agrees: the convention is the one its glTF reader and writer use
    by_trimesh = trimesh.visual.color.uv_to_color(np.asarray(loaded.visual.uv),
                                                  loaded.visual.material.baseColorTexture)[:, :3]
    assert (np.abs(by_trimesh.astype(float) - expected) < 64).all(1)[away].mean() > 0.95


def test_png_equals_embedded_texture(sphere_export) -> None:  # noqa: ANN001
    result, *_ = sphere_export
    assert result.png_path == result.glb_path.with_suffix(".png")
    png = np.asarray(Image.open(result.png_path).convert("RGB"))
    loaded = trimesh.load(result.glb_path, force="mesh")
    embedded = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert png.shape == (128, 128, 3)
    np.testing.assert_array_equal(png, embedded)
    np.testing.assert_array_equal(png, result.texture)
    assert sorted(p.name for p in result.glb_path.parent.iterdir()) == ["asset.glb", "asset.png"]


def test_write_glb_round_trips_uv_orientation(tmp_path) -> None:  # noqa: ANN001
    # a quad whose top edge (v = 1) must show the image's top row (red) and bottom edge (v = 0) blue
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], np.float32)  # z up: top is z = 1
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    texture = np.zeros((8, 8, 3), np.uint8)
    texture[:4] = (255, 0, 0)
    texture[4:] = (0, 0, 255)
    write_glb(Mesh(vertices, np.array([[0, 1, 2], [0, 2, 3]]), uvs=uvs), texture, tmp_path / "quad.glb")
    loaded = trimesh.load(tmp_path / "quad.glb", force="mesh")
    colours = trimesh.visual.color.uv_to_color(np.asarray(loaded.visual.uv) * 0.9 + 0.05,
                                               loaded.visual.material.baseColorTexture)[:, :3]
    top = from_file_frame(np.asarray(loaded.vertices))[:, 2] > 0.5
    assert (colours[top] == (255, 0, 0)).all() and (colours[~top] == (0, 0, 255)).all()


def surface(density: object, cfg: ExportConfig) -> Mesh:
    """The export's iso-surface step with `cfg`'s settings."""
    return extract_mesh(density, cfg.grid_resolution, cfg.density_threshold, cfg.bound, cfg.max_faces, "cpu",
                        cfg.memory_gb)


def test_keeps_only_the_main_component() -> None:
    big, blob = sphere_density((-0.2, 0.0, 0.0), 0.45), sphere_density((0.75, 0.75, 0.75), 0.1)
    mesh = surface(lambda x: torch.maximum(big(x), blob(x)), config())
    distance = np.linalg.norm(mesh.vertices - np.array([-0.2, 0.0, 0.0]), axis=1)
    assert np.abs(distance - 0.45).max() < 1.5 * 2 / 63
    assert mesh.uvs is None


def test_simplifies_to_the_face_budget() -> None:
    full = surface(sphere_density((0, 0, 0), 0.7), config(max_faces=2_000_000))
    assert len(full.faces) > 2_000
    mesh = surface(sphere_density((0, 0, 0), 0.7), config(max_faces=2_000))
    assert 1_500 <= len(mesh.faces) <= 2_000
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.7).max() < 0.05


def test_grid_maps_exactly_to_unit_coordinates_and_closes_at_the_bound() -> None:
    # a linear field is interpolated exactly: the half-space x < 0.3, cut by the volume, is a closed box
    mesh = surface(lambda x: THRESHOLD + 50.0 * (0.3 - x[:, 0]), config(grid_resolution=32))
    np.testing.assert_allclose(mesh.vertices.min(0), [-1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(mesh.vertices.max(0), [0.3, 1, 1], atol=1e-6)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(1.3 * 2 * 2, rel=1e-5)


@pytest.mark.parametrize(("density", "words"), [
    (lambda x: torch.zeros(len(x)), ("empty", "export.density_threshold")),
    (lambda x: torch.full((len(x),), math.nan), ("empty", "export.density_threshold")),
    (lambda x: torch.full((len(x),), 1e3), ("fills the whole volume", "export.density_threshold")),
])
def test_degenerate_field_raises_and_writes_nothing(tmp_path, density, words) -> None:  # noqa: ANN001
    with pytest.raises(InputError) as info:
        export_asset(density, red_above(0.0), Frame(), config(), tmp_path / "out.glb")
    assert all(w in str(info.value) for w in words)
    assert f"{THRESHOLD:g}" in info.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shift", [-40.0, 70.0], ids=["empty", "full"])
def test_no_surface_says_what_it_measured_and_a_threshold_that_works(shift: float) -> None:
    # the sphere field moved wholly below (or above) the threshold: before the shift it spans −52 … 35
    density = lambda x: sphere_density((0.0, 0.0, 0.0), 0.5)(x) + shift  # noqa: E731
    with pytest.raises(InputError) as info:
        surface(density, config(grid_resolution=24))
    error = info.value
    assert error.code == "no_surface" and error.details["threshold"] == THRESHOLD
    peak, lowest = error.details["peak_density"], error.details["lowest_density"]
    assert (f"peak density is {peak:.3g}" if shift < 0 else f"lowest density is {lowest:.3g}") in error.message
    suggested = error.details["suggested_threshold"]
    assert lowest < suggested < peak and f"density_threshold = {suggested:g}" in error.hint
    mesh = surface(density, config(grid_resolution=24, density_threshold=suggested))
    assert len(mesh.faces) > 100


def test_failing_bake_writes_nothing(tmp_path) -> None:  # noqa: ANN001
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("colour network exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        export_asset(sphere_density((0, 0, 0), 0.5), broken, Frame(), config(grid_resolution=24),
                     tmp_path / "out.glb")
    assert list(tmp_path.iterdir()) == []


def test_default_config_is_valid() -> None:
    ExportConfig().validate()


@pytest.mark.parametrize(("field", "value"), [
    ("grid_resolution", 0), ("grid_resolution", -64), ("grid_resolution", math.nan),
    ("grid_resolution", 64.0), ("grid_resolution", True),
    ("texture_size", 0), ("texture_size", -1024), ("max_faces", 0), ("max_faces", -5),
    ("bound", 0.0), ("bound", -1.0), ("bound", math.nan), ("bound", math.inf),
    ("density_threshold", math.nan), ("density_threshold", -math.inf),
])
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"export.{field}"):
        ExportConfig(**{field: value}).validate()


def test_written_files_get_ordinary_permissions(tmp_path):
    import stat

    from backend.export.files import write_atomically

    write_atomically({tmp_path / "a.glb": b"x"})
    assert stat.S_IMODE((tmp_path / "a.glb").stat().st_mode) == 0o644


def sphere_and_torus(x: torch.Tensor) -> torch.Tensor:
    """A ball with a thin ring around it (tube radius 0.06, two fine cells at 64³): a known field with a
    feature much smaller than the coarse grid's cells."""
    ball = 0.35 - x.norm(dim=-1)
    ring = 0.06 - torch.stack([x[:, :2].norm(dim=-1) - 0.7, x[:, 2]], -1).norm(dim=-1)
    return THRESHOLD + 50.0 * torch.maximum(ball, ring)


def test_coarse_to_fine_evaluates_fewer_points_and_matches_the_dense_grid() -> None:
    from backend.isosurface import _marching_cubes, sample_grid, sample_near_surface

    evaluated = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        evaluated[0] += len(x)
        return sphere_and_torus(x)

    r = 64
    dense = sample_grid(sphere_and_torus, r, 1.0, "cpu")
    near, _ = sample_near_surface(counted, r, 1.0, THRESHOLD, "cpu", chunk=1 << 15)
    assert evaluated[0] < 0.5 * r**3
    inside, near_inside = dense > THRESHOLD, near > THRESHOLD
    assert (inside & near_inside).sum() / (inside | near_inside).sum() >= 0.98
    # the mesh is the dense grid's: every cell the surface crosses was evaluated exactly
    a, b = (trimesh.Trimesh(*_marching_cubes(g, THRESHOLD, 1.0)) for g in (dense, near))
    assert len(a.faces) == len(b.faces) and a.volume == pytest.approx(b.volume, rel=1e-6)


def test_export_reports_every_sub_step_ending_at_its_total(sphere_export) -> None:  # noqa: ANN001
    from backend.events import Progress, StageStarted
    from backend.export.progress import STAGE_PREFIX, SUBSTEPS

    result, *_, events = sphere_export
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert started == [STAGE_PREFIX + s for s in SUBSTEPS]
    for stage in started:
        steps = [e for e in events if isinstance(e, Progress) and e.stage == stage]
        assert steps and steps[-1].step == steps[-1].total
    assert all(e.eta_s > 0 for e in events if isinstance(e, Progress))
    assert 1 <= result.charts < 30  # a smooth sphere needs few charts


def test_chunks_respect_the_memory_budget() -> None:
    from backend.fields import BYTES_PER_POINT, chunk_points

    calls: list[int] = []

    def density(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return sphere_density((0, 0, 0), 0.5)(x)

    surface(density, config(grid_resolution=48, memory_gb=0.1))
    assert max(calls) <= chunk_points(0.1) and chunk_points(0.1) * BYTES_PER_POINT <= 0.1 * 2**30
