"""Marching tetrahedra, the differentiable surface render, the DMTet grid and the mesh regularisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from backend.cameras import Cameras
from backend.render.marching_tets import TetGrid, marching_tets
from backend.scene.dmtet import DMTet, laplacian_smoothness, normal_consistency, render_surface


def test_marching_tets_of_a_sphere_is_a_closed_surface_on_the_sphere():
    grid = TetGrid.build(24, 1.0)
    radius = 0.55
    vertices, faces = marching_tets(grid, grid.vertices, grid.vertices.norm(dim=-1) - radius)
    mesh = trimesh.Trimesh(vertices.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert len(mesh.split(only_watertight=False)) == 1
    # linear interpolation of a smooth SDF along edges of 1/12: far below a cell
    assert float((vertices.norm(dim=-1) - radius).abs().max()) < 0.1 * grid.cell
    assert mesh.volume > 0  # wound outwards
    assert abs(mesh.volume - 4 / 3 * math.pi * radius**3) < 0.02 * mesh.volume


def test_an_sdf_without_a_zero_crossing_gives_an_empty_surface():
    grid = TetGrid.build(4, 1.0)
    vertices, faces = marching_tets(grid, grid.vertices, torch.ones(len(grid.vertices)))
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)


def test_marching_tets_gradients_reach_sdf_values_and_offsets():
    torch.manual_seed(0)
    grid = TetGrid.build(6, 1.0)
    base = grid.vertices.double()
    sdf = (base.norm(dim=-1) - 0.5 + 0.05 * torch.randn(len(base), dtype=torch.float64)).requires_grad_()
    offsets = (0.02 * torch.randn(len(base), 3, dtype=torch.float64)).requires_grad_()
    points, faces = marching_tets(grid, base + offsets, sdf)
    weights = torch.randn(points.shape, dtype=torch.float64)

    def loss(s: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        p, f = marching_tets(grid, base + o, s)
        assert torch.equal(f, faces)  # small steps keep the topology, so the loss is smooth
        return (p * weights).sum()

    loss(sdf, offsets).backward()
    near = torch.nonzero(sdf.grad.abs() > 1e-6).squeeze(1)[:8]
    assert len(near) >= 4
    eps = 1e-6
    for i in near.tolist():
        e = torch.zeros_like(sdf)
        e[i] = eps
        fd = (loss(sdf.detach() + e, offsets.detach()) - loss(sdf.detach() - e, offsets.detach())) / (2 * eps)
        assert abs(float(fd) - float(sdf.grad[i])) < 1e-5 * max(1.0, abs(float(fd)))
        for k in range(3):
            e3 = torch.zeros_like(offsets)
            e3[i, k] = eps
            fd = (loss(sdf.detach(), offsets.detach() + e3) - loss(sdf.detach(), offsets.detach() - e3)) / (2 * eps)
            assert abs(float(fd) - float(offsets.grad[i, k])) < 1e-5 * max(1.0, abs(float(fd)))


def test_silhouette_gradient_of_a_rendered_sphere_matches_its_analytic_value():
    """Coverage of a sphere of radius r seen from distance D: gradients reach r through the antialiased edge."""
    grid = TetGrid.build(24, 1.0)
    cams = Cameras.orbit(20.0, 30.0, 1.5, 50.0)
    size = 64

    def coverage(r: torch.Tensor) -> torch.Tensor:
        v, f = marching_tets(grid, grid.vertices, grid.vertices.norm(dim=-1) - r)
        out = render_surface(v, f, cams, size, lambda p: torch.full_like(p, 0.5),
                             lambda d: torch.zeros(*d.shape[:-1], 3), "albedo")
        return out.opacity.sum()

    r = torch.tensor(0.5, requires_grad=True)
    coverage(r).backward()
    focal = size / (2 * math.tan(math.radians(25)))
    x = 0.5 / 1.5
    screen_radius = focal * x / math.sqrt(1 - x * x)
    d_screen = focal / 1.5 * (1 - x * x) ** -1.5
    analytic = 2 * math.pi * screen_radius * d_screen  # d(area)/dr in pixels
    assert 0.75 * analytic < float(r.grad) < 1.25 * analytic, (float(r.grad), analytic)


def test_dmtet_starts_from_the_density_s_surface_and_drops_floaters():
    dmtet = DMTet(20, 1.0)

    def density(x: torch.Tensor) -> torch.Tensor:
        main = 20 * torch.sigmoid((0.45 - (x - torch.tensor([0.1, 0.0, 0.0])).norm(dim=-1)) / 0.02)
        floater = 20 * torch.sigmoid((0.08 - (x - torch.tensor([-0.7, 0.0, 0.5])).norm(dim=-1)) / 0.02)
        return main + floater

    dmtet.init_from_density(density, 10.0)
    vertices, faces = dmtet.surface()
    mesh = trimesh.Trimesh(vertices.detach().numpy(), faces.numpy())
    assert len(mesh.split(only_watertight=False)) == 1 and mesh.is_watertight
    centre_distance = (vertices.detach() - torch.tensor([0.1, 0.0, 0.0])).norm(dim=-1)
    assert float((centre_distance - 0.45).abs().max()) < 0.5 * dmtet.grid.cell
    # a resumed grid keeps its own values
    with torch.no_grad():
        dmtet.sdf.add_(0.01)
    dmtet.init_from_density(density, 10.0)
    assert not torch.equal(dmtet.surface()[0], vertices)


def test_mesh_regularisers_are_low_on_a_smooth_surface_and_high_on_a_rough_one():
    grid = TetGrid.build(16, 1.0)
    sdf = grid.vertices.norm(dim=-1) - 0.6
    smooth_v, faces = marching_tets(grid, grid.vertices, sdf)
    rough_v = smooth_v + 0.03 * torch.from_numpy(np.random.default_rng(0).standard_normal(smooth_v.shape)).float()
    assert normal_consistency(smooth_v, faces) < 0.5 * normal_consistency(rough_v, faces)
    assert laplacian_smoothness(smooth_v, faces) < 0.5 * laplacian_smoothness(rough_v, faces)


def mesh_job_config(**changes):
    from tiny_config import TINY

    from backend.config import merge
    from backend.tasks.generate import GenerateConfig

    # the tiny field is blurry: its iso-level sits lower than the default's
    settings = {**TINY, "optim": {"iters": 6}, "refine": {"iters": 2, "resolution": 32},
                "mesh": {"iters": 4, "resolution": 32, "grid_resolution": 12}, **changes}
    return merge(GenerateConfig(prompt="a box"), settings)


def test_checkpoint_and_resume_across_the_nerf_to_mesh_hand_over(tmp_path):
    """Cancelled in the mesh stage and resumed: the same losses as an uninterrupted run, and a normal map."""
    import contextlib
    import threading

    from shapes import two_tone_box

    from backend.errors import Cancelled
    from backend.guidance.target import TargetGuidance
    from backend.tasks.generate import generate

    guidance = TargetGuidance(two_tone_box())
    config = mesh_job_config(loop={"checkpoint_every": 1})

    def run(job_dir, cancel_at=None):
        cancel, out = threading.Event(), []

        def sink(e):
            if hasattr(e, "losses") and not e.stage.startswith("export"):  # export sub-steps have no losses
                out.append((e.stage, e.step, e.losses["guidance"]))
                if (e.stage, e.step) == cancel_at:
                    cancel.set()
        result = None
        with contextlib.suppress(Cancelled):
            result = generate(config, guidance, job_dir / "x.glb", on_event=sink, cancel=cancel, job_dir=job_dir)
        return out, result

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, result = run(tmp_path / "a")
    assert [s for s, *_ in straight].count("mesh") == 4
    assert result.normal_map_path is not None and result.normal_map_path.is_file() and result.charts >= 1
    first, _ = run(tmp_path / "b", cancel_at=("mesh", 2))
    second, _ = run(tmp_path / "b")
    assert second[0][:2] == ("mesh", 3)
    resumed = first + second
    assert [(s, i) for s, i, _ in resumed] == [(s, i) for s, i, _ in straight]
    assert np.allclose([v for *_, v in resumed], [v for *_, v in straight], rtol=1e-4)


@pytest.mark.parametrize("method", ["sds", "hifa"])
def test_the_mesh_stage_draws_its_own_timesteps_and_zoomed_in_cameras(method, monkeypatch, tmp_path):
    """Magic3D's refinement: t ≤ mesh.t_max (0.5) whatever the latent stage draws (HiFA's annealed t continues
    the job's schedule, clamped into the stage's range), cameras inside the stage's narrower field of view
    and elevations."""
    from shapes import two_tone_box

    import backend.tasks.distill as distill
    from backend.cameras import CameraSampler
    from backend.events import StageStarted
    from backend.guidance.target import TargetGuidance
    from backend.schedules import sqrt_annealed_timesteps
    from backend.tasks.generate import generate

    stage, drawn = [""], {"t": [], "cameras": []}
    sample_t, sample_cameras = distill.sample_timesteps, CameraSampler.sample

    def timesteps(*args, **kwargs):
        drawn["t"].append((stage[0], sample_t(*args, **kwargs)))
        return drawn["t"][-1][1]

    def cameras(self, batch=1):
        drawn["cameras"].append((stage[0], sample_cameras(self, batch)))
        return drawn["cameras"][-1][1]

    monkeypatch.setattr(distill, "sample_timesteps", timesteps)
    monkeypatch.setattr(CameraSampler, "sample", cameras)
    config = merge_method(mesh_job_config(optim={"iters": 6}, refine={"iters": 0},
                                          mesh={"iters": 8, "resolution": 32, "grid_resolution": 12}), method)
    c = config.mesh
    generate(config, TargetGuidance(two_tone_box()), tmp_path / "m.glb",
             on_event=lambda e: stage.__setitem__(0, e.stage) if isinstance(e, StageStarted) else None)
    t = {name: torch.cat([v for s, v in drawn["t"] if s == name]) for name in ("latent", "mesh")}
    assert len(t["mesh"]) == c.iters
    assert int(t["mesh"].min()) >= int(c.t_min * 1000) and int(t["mesh"].max()) <= int(c.t_max * 1000)
    assert int(t["latent"].max()) > int(c.t_max * 1000)  # the latent stage draws above it
    if method == "hifa":  # the job's √-annealed t, clamped into [t_min, t_max]
        total = config.optim.iters + c.iters
        expected = [min(int(sqrt_annealed_timesteps(config.timesteps, config.optim.iters + k, total, 1, 1000,
                                                    torch.Generator())), int(c.t_max * 1000)) for k in range(c.iters)]
        assert t["mesh"].tolist() == expected and expected[0] == 500 > expected[-1]  # clamped, then below
    views = {name: [cams for s, cams in drawn["cameras"] if s == name] for name in ("latent", "mesh")}
    fov = torch.rad2deg(torch.cat([cams.fov for cams in views["mesh"]]))
    elevation = torch.cat([cams.elevation for cams in views["mesh"]])
    for values, (lo, hi) in ((fov, c.fov_range), (elevation, c.elevation_range)):
        assert lo - 1e-3 <= float(values.min()) and float(values.max()) <= hi + 1e-3
    assert float(torch.rad2deg(torch.cat([cams.fov for cams in views["latent"]])).max()) > c.fov_range[1]


def merge_method(config, method: str):  # noqa: ANN001, ANN201
    from backend.compose import method_overrides
    from backend.config import merge

    return merge(config, method_overrides(method, type(config)))


def test_smoothing_weights_are_the_references_at_512_and_scale_with_a_summed_loss_s_pixels():
    """10⁴ normal consistency and 0.5 Laplacian at 512²: an SDS render of 128² carries a sixteenth of the summed
    guidance, so the weights are a sixteenth too; HiFA's loss is normalised to the native size, so its are not."""
    from shapes import two_tone_box

    from backend.guidance.target import TargetGuidance
    from backend.tasks.generate import prepare_generate

    weights = {}
    for method in ("sds", "hifa"):
        config = merge_method(mesh_job_config(mesh={"iters": 1, "resolution": 128, "grid_resolution": 8}), method)
        regularisers = prepare_generate(config, TargetGuidance(two_tone_box())).stages[-1].step.regularisers
        weights[method] = (regularisers["normal_consistency"][0], regularisers["laplacian"][0])
    assert weights == {"sds": (1e4 / 16, 0.5 / 16), "hifa": (1e4, 0.5)}
