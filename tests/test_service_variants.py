"""Variants on the service's own workers: a submit of several seeds runs as drafts side by side, the group is one
entry, the picked draft is finished from its checkpoint (never trained from zero), and a variant whose worker is
killed restarts from its last checkpoint while the rest of the group goes on."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest
from test_service_faults import assert_valid, wait_until

from backend.cli import main
from backend.service.client import ServiceError

pytestmark = pytest.mark.timeout(300)
JOB_S = 240  # a tiny job takes seconds on an idle 2-core machine, minutes on a busy one


@pytest.fixture(scope="module")
def service(start_service):  # noqa: ANN001, ANN201
    service = start_service(workers=2)
    wait_until(lambda: service.log().count(" joined (") >= 2, 120, "two workers", service.log())
    return service


def schedule(tiny: dict, iters: int) -> dict:
    return {**tiny, "optim": {"iters": iters}, "loop": {"checkpoint_every": 5, "preview_every_s": 0.2}}


def latent(progress: list, job: str) -> list[tuple[int, int]]:
    """(step, total) of the latent steps streamed for `job` (stage announcements left out)."""
    return [(p.fields["step"], p.fields["total"]) for p in progress
            if p.fields["job"] == job and p.fields["stage"] == "latent" and p.fields["step"]]


def test_drafts_side_by_side_then_the_picked_one_finishes_from_where_its_draft_ended(service, service_tiny,
                                                                                     tmp_path, capsys) -> None:  # noqa: ANN001
    overrides = tmp_path / "tiny.json"  # the whole job has later stages, whose state no draft has
    overrides.write_text(json.dumps({**schedule(service_tiny, 24), "refine": {"iters": 2, "resolution": 32},
                                     "mesh": {"iters": 3, "resolution": 32, "grid_resolution": 12}}))
    assert main(["submit", "--server", service.endpoint, "--prompt", "a toadstool", "--seed", "7", "--variants", "2",
                 "--draft-iters", "8", "--overrides", str(overrides)]) == 0
    group, *lines = capsys.readouterr().out.split("\n")[:3]
    jobs = {int(seed): job for job, _, seed in (line.split() for line in lines)}
    assert sorted(jobs) == [7, 8]
    progress: list = []
    with service.client() as client:
        client.status(group, watch=True)
        drafts = client.wait_all(list(jobs.values()), JOB_S, progress.append)
        entry = next(e for e in client.list() if e["job"] == group)  # the group is one entry, with its variants
        assert [(v["job"], v["seed"], v["draft"]) for v in entry["variants"]] == [(jobs[7], 7, 8), (jobs[8], 8, 8)]
        assert entry["state"] == "finished"
        assert not set(jobs.values()) & {e["job"] for e in client.list()}  # listed only inside their group
        for seed, job in jobs.items():  # each draft is a complete asset, made on its own worker
            assert_valid(drafts[job])
            assert drafts[job].stats["draft"] == 8 and drafts[job].stats["seed"] == seed
            assert latent(progress, job)[-1] == (8, 8)
            assert any(p.fields["job"] == job and p.blobs.get("preview") for p in progress)
        assert drafts[jobs[7]].stats["worker"] != drafts[jobs[8]].stats["worker"]
        assert drafts[jobs[7]].texture_png != drafts[jobs[8]].texture_png  # two seeds, two assets
        with pytest.raises(ServiceError) as err:
            client.fetch(group)
        assert err.value.code == "not_finished" and "fetch one of its variants" in err.value.hint

    out = tmp_path / "final.glb"
    assert main(["finish", "--server", service.endpoint, jobs[8], "--wait", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"glTF"
    with service.client() as client:
        info = client.status(jobs[8])
        assert info["state"] == "finished" and info["draft"] is None and info["attempts"] == 2
        final = client.fetch(jobs[8])
        assert "draft" not in final.stats and final.texture_png != drafts[jobs[8]].texture_png
        assert final.normal_png is not None and drafts[jobs[8]].normal_png is None  # the mesh stage ran
        assert client.status(jobs[7])["state"] == "finished"  # an ended draft stays, to follow retention
        for job, code in ((jobs[8], "not_finishable"), (group, "not_finishable")):
            with pytest.raises(ServiceError) as err:
                client.finish(job)
            assert err.value.code == code
    # the finish resumed at the draft's last step, in the whole schedule: it did not train from zero again
    printed = capsys.readouterr().err.splitlines()
    finish = [line.split()[1].split("/") for line in printed if line.startswith("latent ")]
    steps = [int(step) for step, total in finish if int(step) and total == "24"]
    assert steps and steps[0] > 8, finish[:3]
    assert any(line.startswith("rgb_refine 2/2") for line in printed) and any(line.startswith("mesh 3/3")
                                                                             for line in printed)


def test_a_draft_picked_while_it_runs_goes_on_into_its_finish_and_the_other_is_cancelled(service,
                                                                                         service_tiny) -> None:  # noqa: ANN001
    with service.client() as client:
        group = client.submit_variants(2, "a toadstool", overrides=schedule(service_tiny, 90), draft_iterations=60)
        (picked, _), (other, _) = group.jobs
        wait_until(lambda: (client.status(picked).get("progress") or {}).get("step"), JOB_S, "the draft to step")
        assert client.finish(picked)["finish_requested"]
        progress: list = []
        ended = client.wait_all([picked, other], JOB_S, progress.append)
        info = client.status(picked)
    assert_valid(ended[picked])
    assert isinstance(ended[other], ServiceError) and ended[other].code == "cancelled"
    steps = latent(progress, picked)
    assert steps[-1] == (90, 90) and info["attempts"] == 2 and info["draft"] is None
    finish = [step for step, total in steps if total == 90]
    assert finish[0] > 60, steps  # on from the draft's end, not from zero


def test_a_worker_killed_mid_variant_restarts_it_and_the_group_completes(service, service_tiny) -> None:  # noqa: ANN001
    with service.client() as client:
        group = client.submit_variants(2, "a toadstool", overrides=schedule(service_tiny, 300), draft_iterations=150)
        jobs = [job for job, _ in group.jobs]
        saved = wait_until(lambda: (c := client.status(jobs[0])["checkpoint"]) and c["step"] >= 10 and c, JOB_S,
                           "a checkpoint", service.log())
        killed = client.status(jobs[0])["worker"]
        os.kill(int(killed.rsplit(":", 1)[1]), signal.SIGKILL)
        progress: list = []
        drafts = client.wait_all(jobs, JOB_S, progress.append)
        infos = [client.status(job) for job in jobs]
    for job in jobs:
        assert_valid(drafts[job])
    assert infos[0]["attempts"] == 2 and infos[0]["crashes"] == 1 and infos[1]["crashes"] == 0
    resumed = [s for s, _ in latent([p for p in progress if p.fields["worker"] != killed], jobs[0])]
    assert resumed[0] > saved["step"], "the variant restarted from zero instead of its checkpoint"
    assert f"worker {killed} exited" in service.log()


def test_idle_workers_go_first_to_the_client_with_the_fewest_jobs_running() -> None:
    from backend.service.broker import WorkerPool

    owners = {"a1": "alice", "a2": "alice", "a3": "alice", "a4": "alice", "b1": "bob", "c1": "carol"}
    pool = WorkerPool(host=None)
    for job in owners:  # alice's four variants were submitted before bob's and carol's jobs
        pool.enqueue(job)
    pool.workers = {k: SimpleNamespace(key=k, models=frozenset({"m"}), job=None) for k in range(4)}
    pool.idle = [0, 1, 2]
    pool.workers[3].job = "b0"  # bob already has one running
    owners["b0"] = "bob"
    pairs = pool.match(lambda job: "m", owners.get)
    # alice and carol run nothing yet; then alice and bob have one each, and alice's is older
    assert [job for job, _ in pairs] == ["a1", "c1", "a2"]
    assert list(pool.queue) == ["a3", "a4", "b1"]
    assert [job for job, _ in WorkerPool(host=None).match(lambda job: "m")] == []  # no worker, no job


def test_a_group_and_its_drafts_survive_a_restart_and_a_finished_draft_resumes_in_the_whole_schedule(
        tmp_path) -> None:  # noqa: ANN001
    import torch

    from backend.service import checkpoint_wire, variants
    from backend.service.board import JobBoard
    from backend.service.broker import WorkerPool
    from backend.service.jobs import JobStore

    store, group = JobStore(tmp_path), "a" * 32
    done, waiting = (store.create({"task": "generate", "prompt": "a toadstool", "seed": seed, "draft": 8}, {},
                                  "loopback", group=group, draft=8) for seed in (3, 4))
    skeleton, arrays = checkpoint_wire.flatten({"stage": 1, "step": 0, "scene": {"w": torch.ones(2)}})
    store.save_checkpoint(done.id, skeleton, arrays)  # its draft's end
    store.save_result(done.id, {"vertices": np.zeros((3, 3), np.float32)}, b"png", b"glb", keep_checkpoint=True)
    done.state = "finished"
    store.save(done)

    def restarted() -> JobBoard:  # what a service does at start
        board = JobBoard(store, lambda *_: None, 3, lambda: None)
        board.pool = WorkerPool(board)
        board.recover()
        return board

    board = restarted()
    summary = board.group_summary(group)
    assert summary["state"] == "queued" and [(v["seed"], v["draft"]) for v in summary["variants"]] == [(3, 8), (4, 8)]
    assert [e["job"] for e in board.entries("loopback", False)] == [group]
    assert store.has_checkpoint(done.id) and list(board.pool.queue) == [waiting.id]
    board.finish(board.records[done.id], variants.finish_spec(store.spec(done.id)))
    board = restarted()
    again = board.records[done.id]
    assert again.state == "queued" and again.draft is None and "draft" not in store.spec(done.id)
    assert again.checkpoint == {"stage": 0, "step": 8}  # step 8 of the first stage of the whole schedule
    assert dict(store.load_checkpoint(done.id)[0]["$dict"])["draft"] is True
    assert list(board.pool.queue) == [done.id, waiting.id]  # the finish runs first: it was submitted first
