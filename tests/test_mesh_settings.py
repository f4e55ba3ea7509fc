"""The mesh stage's settings reach it from presets, CLI flags and the service; its normal map is kept with the
job's result."""

from __future__ import annotations

import argparse

import pytest

from backend.cli import _overrides, task_flags
from backend.config import merge
from backend.errors import ConfigError
from backend.service import tasks
from backend.service.jobs import JobStore
from backend.tasks.generate import GenerateConfig


def test_presets_pick_the_mesh_stage():
    def mesh_iters(preset: str) -> int:
        spec = tasks.JobSpec("generate", {"task": "generate", "prompt": "p", "preset": preset})
        return spec.config().mesh.iters

    assert mesh_iters("draft") == 0
    assert mesh_iters("standard") == GenerateConfig().mesh.iters > 0
    assert mesh_iters("high") > mesh_iters("standard")
    spec = tasks.JobSpec("generate", {"task": "generate", "prompt": "p", "preset": "high",
                                      "overrides": {"mesh": {"iters": 0}}})
    assert spec.config().mesh.iters == 0  # the add-on's Mesh Steps beat the preset


def test_cli_flags_set_mesh_steps_and_resolution():
    overrides = _overrides(argparse.Namespace(mesh_iters=25, mesh_resolution=256), task_flags("generate"))
    config = merge(GenerateConfig(prompt="p"), overrides)
    assert (config.mesh.iters, config.mesh.resolution) == (25, 256)


@pytest.mark.parametrize("mesh", [{"resolution": 1024}, {"resolution": 100}, {"iters": -1},
                                  {"grid_resolution": 4}])
def test_bad_mesh_settings_are_refused_with_the_setting_named(mesh):
    with pytest.raises(ConfigError, match="mesh"):
        merge(GenerateConfig(prompt="p"), {"mesh": mesh}).validate()


def test_the_job_store_keeps_a_result_s_normal_map(tmp_path):
    import numpy as np

    store = JobStore(tmp_path)
    plain = store.create({"task": "generate"}, {}, "me").id
    refined = store.create({"task": "generate"}, {}, "me").id
    arrays = {"vertices": np.zeros((3, 3), np.float32), "faces": np.array([[0, 1, 2]])}
    store.save_result(plain, arrays, b"png", b"glb")
    store.save_result(refined, arrays, b"png", b"glb", b"normal")
    assert store.load_normal_map(plain) is None and store.load_normal_map(refined) == b"normal"
