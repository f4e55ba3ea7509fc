"""A whole job's progress: every stage and every export sub-step is announced and ends at its total, and the
ETA stays positive until the result is handed back."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_config import TINY

from backend.config import from_dict
from backend.events import Progress, StageStarted
from backend.export.progress import STAGE_PREFIX, SUBSTEPS
from backend.guidance.target import TargetGuidance
from backend.tasks.generate import GenerateConfig, generate

TARGET = Path(__file__).resolve().parents[1] / "backend" / "examples" / "toadstool" / "target.glb"


@pytest.fixture(scope="module")
def job_events(tmp_path_factory: pytest.TempPathFactory) -> list:
    events: list = []
    config = from_dict(GenerateConfig, {**TINY, "prompt": "a red toadstool"})
    generate(config, TargetGuidance.from_file(TARGET), tmp_path_factory.mktemp("job") / "asset.glb",
             on_event=events.append)
    return events


def test_every_stage_and_export_sub_step_ends_at_its_total(job_events: list) -> None:
    started = [e for e in job_events if isinstance(e, StageStarted)]
    names = [e.stage for e in started]
    assert names == ["latent", "rgb_refine", *(STAGE_PREFIX + s for s in SUBSTEPS)]
    for stage in started:
        steps = [e for e in job_events if isinstance(e, Progress) and e.stage == stage.stage]
        assert steps, f"{stage.stage} reported no progress"
        assert steps[-1].step == steps[-1].total == stage.total
        assert [e.step for e in steps] == sorted(e.step for e in steps)


def test_eta_is_positive_until_the_result(job_events: list) -> None:
    progress = [e for e in job_events if isinstance(e, Progress)]
    assert all(e.eta_s > 0 for e in progress)
    # the last optimisation step's ETA is the export's estimate, not 0
    last_refine = [e for e in progress if e.stage == "rgb_refine"][-1]
    assert last_refine.eta_s > 0.1
