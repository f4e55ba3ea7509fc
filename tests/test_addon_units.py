"""The add-on's small parts on their own: addresses, job state, the job a panel's settings make,
preferences that cannot work, the local server's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import test_addon_support as support


@pytest.mark.parametrize(("text", "expected", "loopback"), [
    ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555", True),
    ("  tcp://localhost:7000 ", "tcp://localhost:7000", True),
    ("tcp://[::1]:5555", "tcp://[::1]:5555", True),
    ("tcp://gpu-box.lan:5555", "tcp://gpu-box.lan:5555", False),
    ("tcp://10.0.0.7:5555", "tcp://10.0.0.7:5555", False),
    ("ipc:///tmp/latentforge.sock", "ipc:///tmp/latentforge.sock", True),
])
def test_addresses_parse(text: str, expected: str, loopback: bool) -> None:
    address = support.submodule("addresses").parse_address(text)
    assert str(address) == expected and address.is_loopback == loopback


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1:5555", "has no scheme"),
    ("http://127.0.0.1:5555", "unsupported scheme"),
    ("tcp://127.0.0.1", "needs a port"),
    ("tcp://127.0.0.1:99999", "needs a port"),
    ("tcp://:5555", "no valid host"),
    ("ipc://", "needs a socket path"),
])
def test_bad_addresses_say_how_to_write_them(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        support.submodule("addresses").parse_address(text)


def test_a_job_follows_progress_summaries_and_errors() -> None:
    jobs = support.submodule("jobs")
    job = jobs.Job(scene=1, task="generate", prompt="a teddy bear")
    assert job.active and job.progress_text() == "Sending…"
    job.on_progress({"stage": "rgb_refine", "step": 5, "total": 20, "eta_s": 3725})
    assert job.fraction == 0.25 and job.progress_text() == "RGB refine 5/20  ·  1 h 02 min left"
    job.on_summary({"job": "a" * 32, "state": "queued"})  # requeued after the service restarted
    assert job.state == "queued" and job.active
    job.on_summary({"job": "a" * 32, "state": "finished"})  # stays active until the result is in
    assert job.active
    job.fail({"code": "out_of_memory", "message": "CUDA out of memory", "hint": "use the draft preset"})
    assert job.state == "failed" and job.message == "CUDA out of memory (use the draft preset)"
    assert not job.active


@pytest.mark.parametrize(("code", "message", "details", "extra", "advice"), [
    ("no_surface", "the optimised field is empty", {"suggested_threshold": 1.5, "reexport": True}, {},
     "press Re-export at 1.5"),
    ("no_surface", "the optimised field is empty", {"suggested_threshold": 1.5, "reexport": False}, {},
     'add {"export": {"density_threshold": 1.5}} to Advanced › Extra Settings'),
    ("no_surface", "the optimised field is empty", {"threshold": 10.0}, {}, "another Seed"),
    ("bad_config", "iters must be at least 1, got 0", None, {"optim": {"iters": 0}}, "in Advanced › Extra Settings"),
    ("bad_config", "iters must be at least 1, got 0", None, {}, "set Advanced › Iterations"),
    ("bad_config", "sketch.looseness must be in (0, 2], got 5", None, {}, "set Follow Loosely"),
    ("bad_config", "unknown setting export.treshold", None, {"export": {"treshold": 1}}, "Advanced › Extra Settings"),
    ("bad_input", "every triangle of the sketch is degenerate (zero area)", None, {}, "select other mesh objects"),
    ("worker_lost", "the job stopped its worker 4 times", None, {}, "choose Quality Draft"),
])
def test_errors_say_what_to_change_in_the_panel(code: str, message: str, details: dict | None, extra: dict,
                                                advice: str) -> None:
    jobs = support.submodule("jobs")
    assert advice in support.submodule("advice").advise(code, message, details, extra)
    job = jobs.Job(scene=1, task="generate", extra=extra)
    job.fail({"code": code, "message": message, "hint": "the service's own words", "details": details})
    assert job.message.startswith(message) and advice in job.message and "service's own" not in job.message
    assert (job.reexport_threshold is not None) == bool(details and details.get("reexport"))


def test_one_job_per_scene() -> None:
    jobs = support.submodule("jobs")
    registry = jobs.Jobs()
    first = registry.add(jobs.Job(scene=1, task="generate"))
    registry.add(jobs.Job(scene=2, task="paint"))  # another scene may run its own
    with pytest.raises(RuntimeError, match="already has a job running"):
        registry.add(jobs.Job(scene=1, task="generate"))
    first.fail({"code": "cancelled", "message": "cancelled"})
    assert first.state == "cancelled"
    again = registry.add(jobs.Job(scene=1, task="generate"))
    assert registry.get(1) is again and registry.find(request=again.request) is again


def test_an_ended_job_never_runs_again_and_find_prefers_the_live_one() -> None:
    jobs = support.submodule("jobs")
    registry, job_id = jobs.Jobs(), "c" * 32
    old = registry.add(jobs.Job(scene=1, task="paint", job=job_id, state="running"))
    old.state = "finished"  # its result is in the scene
    for summary in ({"job": job_id, "state": "running", "progress": {"stage": "paint", "step": 3, "total": 9}},
                    {"job": job_id, "state": "queued"}, {"job": job_id, "state": "failed", "error": {"code": "x"}}):
        old.on_summary(summary)  # a late status, a Fetch's, a refresh's answer
        assert old.state == "finished" and not old.active
    held = registry.add(jobs.Job(scene=2, task="fetch", job=job_id, state="finished", held="its file is closed"))
    assert registry.find(job=job_id) is held  # a result waiting for the artist before one long landed
    live = registry.add(jobs.Job(scene=3, task="fetch", job=job_id, state="queued"))
    assert registry.find(job=job_id) is live
    with pytest.raises(RuntimeError, match="already has a job running"):
        registry.move(held, 3)
    registry.move(held, 1)  # its file was opened again: it replaces that scene's ended job
    assert registry.get(1) is held and registry.get(2) is None and held.scene == 1


def test_a_uv_refusal_keeps_the_services_own_hint() -> None:
    jobs = support.submodule("jobs")
    message = "face 0 of the paint mesh crosses UDIM tiles (1001, 1002)"
    hint = "split the UV islands at the tile borders, or pack the UVs into [0, 1]"
    assert support.submodule("advice").advise("bad_input", message) is None
    job = jobs.Job(scene=1, task="paint")
    job.fail({"code": "bad_input", "message": message, "hint": hint})
    assert job.message == f"{message} ({hint})"


def test_panel_settings_become_a_submit() -> None:
    support.fresh_scene()
    bpy, _, _ = support.modules()
    settings = bpy.context.scene.latentforge
    settings.prompt, settings.negative, settings.seed = "  a teddy bear ", "blurry", 7
    settings.method, settings.quality, settings.looseness, settings.texture_size = "hifa", "high", 0.5, "2048"
    settings.extra_json = json.dumps({"sketch": {"weight": 2.0}, "optim": {"lr": 0.01}})
    fields = settings.submit_fields("generate")
    assert fields == {"task": "generate", "prompt": "a teddy bear", "negative": "blurry", "method": "hifa",
                      "preset": "high", "seed": 7,
                      "overrides": {"sketch": {"looseness": 0.5, "weight": 2.0}, "export": {"texture_size": 2048},
                                    "optim": {"lr": 0.01}}}
    settings.mode, settings.iterations, settings.extra_json = "PAINT", 300, ""
    fields = settings.submit_fields("paint")
    assert fields["task"] == "paint" and fields["iterations"] == 300
    assert fields["overrides"] == {"texture_size": 2048}  # paint decodes its texture at that size
    settings.extra_json = "{'not': json}"
    with pytest.raises(ValueError, match="not valid JSON"):
        settings.submit_fields("generate")


def test_preferences_that_cannot_work_say_why(tmp_path: Path) -> None:
    bpy, _, prefs = support.modules()
    p = prefs.get()
    saved = (p.server_address, p.server_key_file, p.client_key_file)
    try:
        p.server_key_file = p.client_key_file = ""
        p.server_address = "tcp://gpu-box.lan:5555"
        assert not bpy.app.online_access  # bpy's default, like Blender started offline
        assert "set to work offline" in prefs.settings_problem(p)
        p.server_key_file = str(tmp_path / "server.key")
        assert "needs both key files" in prefs.settings_problem(p)
        p.client_key_file = str(tmp_path / "blender.key_secret")
        assert "key file not found" in prefs.settings_problem(p)
        p.server_address = "tcp://127.0.0.1:5555"
        assert "key file not found" in prefs.settings_problem(p)  # keys given are checked on loopback too
    finally:
        p.server_address, p.server_key_file, p.client_key_file = saved
    assert prefs.settings_problem(p) is None


def test_local_server_command_and_a_missing_python(tmp_path: Path) -> None:
    local = support.submodule("local_backend")
    command = local.serve_command(sys.executable, "tcp://127.0.0.1:5555", "--device cuda --model 'sd:my model'")
    assert command == [sys.executable, "-m", "backend", "serve", "--bind", "tcp://127.0.0.1:5555", "--device",
                       "cuda", "--model", "sd:my model"]
    backend = local.LocalBackend()
    with pytest.raises(FileNotFoundError, match="set the backend's Python"):
        backend.start([str(tmp_path / "no-python"), "-m", "backend"], tmp_path / "server.log")
    assert not backend.running and backend.exit_message() is None


def test_method_and_quality_lists_follow_the_servers_welcome() -> None:
    support.fresh_scene()
    bpy, _, _ = support.modules()
    choices = support.submodule("choices")
    settings = bpy.context.scene.latentforge
    shipped = choices.names("methods")
    try:
        settings.method, settings.quality = "vsd", "high"
        # a server that offers fewer methods and presets than this extension knows
        choices.offer({"choices": {"methods": [["sds", "SDS", "plain"], ["hifa", "HiFA", "sharper"]],
                                   "presets": [["draft", "Draft", "quick"], ["standard", "Standard", "usual"]]}})
        assert [i[0] for i in choices.enum_items("methods")] == ["sds", "hifa"]
        assert [i[1] for i in choices.enum_items("presets")] == ["Draft", "Standard"]
        # a choice this server does not offer falls back to the default, and is kept for a server that does
        assert (settings.method, settings.quality) == ("sds", "standard")
        assert (settings.method_name, settings.quality_name) == ("vsd", "high")
        assert settings.submit_fields("generate")["method"] == "sds"
        settings.method = "hifa"
        assert settings.submit_fields("generate")["method"] == "hifa"
        with pytest.raises(TypeError):
            settings.method = "vsd"  # not in this server's list
    finally:
        choices.offer({})  # a welcome without lists: the shipped catalogue's
    assert choices.names("methods") == shipped
