"""The add-on's runtime: its state between events (`Runtime`: the connection, the server's status, each scene's
job, results waiting to land) and the main-thread half that a `bpy.app.timers` callback runs, draining the
connection's events into that state, the scene (results, previews) and the UI. Only this side touches bpy.data.

Headless (tests, `blender -b`) there is no event loop to fire timers, so `drain()` is also what a
script calls in its own loop.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import bpy
import bpy.utils.previews

from . import choices, identity, preferences
from .connection import Connection, Event
from .jobs import Job, Jobs, ServerStatus
from .landing import object_by_uid, save_files, scene_by_uid
from .local_backend import LocalBackend
from .variants import Variant, VariantGroup

ACTIVE_INTERVAL_S = 0.1  # while a job runs: progress feels live
IDLE_INTERVAL_S = 0.5
PREVIEW_IMAGE = "LatentForge Preview"


class Runtime:
    """Everything the add-on holds between events; one per Blender session, made in register()."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.server = ServerStatus()
        self.jobs = Jobs()
        self.backend = LocalBackend()
        self.results: dict[str, Event] = {}  # result events waiting for the import operator
        self.last_result_dir: str | None = None
        self.connect_pending = True  # connect on the first tick: preferences do not exist during register()
        self.file_load = 0  # counts the files opened in this session: a job knows which one it was started in
        # job previews live outside bpy.data, so no undo step (and no saved file) ever holds one
        self.previews = bpy.utils.previews.new()
        self.preview_dir = Path(tempfile.mkdtemp(prefix="latentforge-preview-"))


RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("the LatentForge add-on is not registered")
    return RUNTIME


def start() -> None:
    global RUNTIME
    RUNTIME = Runtime()
    # Blender may quit without unregistering add-ons: the local server must not outlive it.
    atexit.register(RUNTIME.backend.stop)
    if restart_connection not in preferences.ON_CHANGE:
        preferences.ON_CHANGE.append(restart_connection)
    if not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=ACTIVE_INTERVAL_S, persistent=True)
    if file_loaded not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(file_loaded)


def stop() -> None:
    global RUNTIME
    if restart_connection in preferences.ON_CHANGE:
        preferences.ON_CHANGE.remove(restart_connection)
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)
    if file_loaded in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(file_loaded)
    if RUNTIME is not None:
        bpy.utils.previews.remove(RUNTIME.previews)
        shutil.rmtree(RUNTIME.preview_dir, ignore_errors=True)
        if RUNTIME.connection is not None:
            RUNTIME.connection.stop()
        RUNTIME.backend.stop()
        atexit.unregister(RUNTIME.backend.stop)
    RUNTIME = None


def restart_connection() -> None:
    """(Re)connect with the current preferences; a setting that cannot work shows as the server status."""
    rt = RUNTIME
    if rt is None:
        return
    rt.connect_pending = False
    if rt.connection is not None:
        rt.connection.stop()
        rt.connection = None
    try:
        settings = preferences.connection_settings(preferences.get())
    except (ValueError, KeyError) as exc:
        rt.server = ServerStatus(False, str(exc))
        return
    rt.server = ServerStatus(False, f"Connecting to {settings.address}…")
    # Liveness checks scale with the timeout: a heartbeat after half of it without a word from the server, and
    # half of it for the answer, so a server that dies is noticed within the timeout.
    half = max(0.5, settings.timeout_s / 2)
    rt.connection = Connection(settings, heartbeat_s=half, quiet_s=half, retry_s=min(2.0, half))
    rt.connection.start()
    for job in rt.jobs.all():  # running jobs go on; the new connection picks their events up
        if job.active and job.job is not None:
            rt.connection.fetch(job.job)


@bpy.app.handlers.persistent
def file_loaded(_file: str) -> None:
    """Another file (or the same one again) is open: scenes and objects are new ones. A job started in this
    very file follows its scene (the one that saved its id); any other's result will not land here."""
    rt = RUNTIME
    if rt is None:
        return
    rt.file_load += 1
    for job in rt.jobs.all():
        if not job.file or job.file != bpy.data.filepath or scene_by_uid(job.scene) is not None:
            continue
        scene = next((s for s in bpy.data.scenes if s.latentforge.job_id == job.job), bpy.context.scene)
        with contextlib.suppress(RuntimeError):  # that scene runs another job: this one waits for a Fetch
            rt.jobs.move(job, scene.session_uid)


def redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def notify(level: str, message: str) -> None:
    """A line in the status bar and the Info log (through an operator: only operators can report)."""
    print(f"LatentForge: {message}")
    # An operator that reports an error also raises it here: the report has been made by then.
    with contextlib.suppress(RuntimeError):
        bpy.ops.latentforge.notify(level=level, message=message[:1000])


def drain() -> float | None:
    """The timer callback: handle every waiting event; returns the seconds until the next call."""
    rt = RUNTIME
    if rt is None:
        return None
    if rt.connect_pending:
        restart_connection()
    events = rt.connection.drain() if rt.connection is not None else []
    for event in events:
        try:
            HANDLERS.get(event.get("type", ""), _ignore)(rt, event)
        except Exception:  # an exception would unregister the timer for good
            traceback.print_exc()
    if (exited := rt.backend.exit_message()) is not None and not rt.server.connected:
        rt.server.message = exited
    if events:
        redraw()
    return ACTIVE_INTERVAL_S if rt.jobs.any_active() else IDLE_INTERVAL_S


# -- event handlers -------------------------------------------------------------------------------------


def _ignore(_rt: Runtime, _event: Event) -> None:
    pass


def _connected(rt: Runtime, event: Event) -> None:
    rt.server = ServerStatus(True, "", dict(event.get("info", {})))
    choices.offer(rt.server.info)


def _disconnected(rt: Runtime, event: Event) -> None:
    rt.server.connected = False
    rt.server.message = event["message"]
    if rt.jobs.any_active():
        notify("WARNING", f"lost the server ({event['message']}); the job goes on there and its progress "
                          "comes back with the connection")


def _heartbeat(rt: Runtime, event: Event) -> None:
    rt.server.update(event)


def _variant(rt: Runtime, job_id: str | None) -> tuple[Job, Variant] | None:
    """The scene job and variant an event is about, when it is about a variant that is not being finished (those
    events show in the panel's grid; none of them fails or lands anything)."""
    for job in rt.jobs.all():
        if job.group is not None and job_id != job.job and (variant := job.group.find(job_id)) is not None:
            return job, variant
    return None


def _group_ended(job: Job) -> None:
    """Nothing of an unpicked group runs any more: without a draft to pick (or once cancelled), the job ends."""
    group = job.group
    if group.picked is not None or group.running or (group.ready and not job.cancel_requested):
        return
    failed = next((v for v in group.variants if v.state == "failed"), None)
    if job.cancel_requested or failed is None:
        job.fail({"code": "cancelled", "message": "the variants were cancelled"}, "cancelled")
    else:
        job.fail({"message": failed.message or "every variant failed"})
    _report_end(job)


def _accepted(rt: Runtime, event: Event) -> None:
    job = rt.jobs.find(request=event["request"])
    if job is None:
        return
    job.job, job.state = event["job"], "queued"
    if event.get("variants"):
        job.group = VariantGroup.accepted(event["job"], event["variants"])
    if (scene := scene_by_uid(job.scene)) is not None:
        scene.latentforge.job_id = job.job
    if job.target is not None:  # saved with the file: a Fetch after a restart lands on the same object
        identity.record_job(object_by_uid(job.target), job.request, job.job)
    if job.cancel_requested and rt.connection is not None:  # Cancel was pressed before the id came
        rt.connection.cancel(job.job)


def _job(rt: Runtime, event: Event) -> None:
    summary = event["job"]
    if (hit := _variant(rt, summary.get("job"))) is not None:
        hit[1].on_summary(summary)
        if hit[0].active and hit[0].group.picked is None:
            _group_ended(hit[0])
        return
    job = rt.jobs.find(job=summary.get("job"))
    if job is None:
        return
    if "variants" in summary:  # the group's own summary (status or cancel)
        job.group.on_summary(summary)
        if job.state in ("submitting", "queued") and summary.get("state") == "running":
            job.state = "running"
        if job.active:
            _group_ended(job)
        return
    was_active = job.active
    job.on_summary(summary)
    if was_active and not job.active:
        _report_end(job)


def _variant_progress(job: Job, variant: Variant, event: Event) -> None:
    variant.on_progress(event)
    if job.state in ("submitting", "queued"):
        job.state = "running"
    _show_preview(variant, event, f"{preview_name(job)} seed {variant.seed}")


def _show_preview(holder: Job | Variant, event: Event, name: str) -> None:
    """The event's preview, if any, as `holder`'s, at most once a preview interval."""
    preview = event.get("blobs", {}).get("preview")
    if preview and time.monotonic() - holder.preview_at >= preferences.get().preview_interval_s:
        holder.preview_at = time.monotonic()
        holder.preview = show_preview(preview, name)


def _progress(rt: Runtime, event: Event) -> None:
    if (hit := _variant(rt, event.get("job"))) is not None:
        if hit[0].active and hit[0].group.picked is None:
            _variant_progress(*hit, event)
        return
    job = rt.jobs.find(job=event.get("job"))
    if job is None or not job.active:
        return
    job.on_progress(event)
    _show_preview(job, event, preview_name(job))


def _result(rt: Runtime, event: Event) -> None:
    draft = (event.get("stats") or {}).get("draft") is not None  # a variant's draft: judged, never landed
    if (hit := _variant(rt, event.get("job"))) is not None or draft:
        if hit is not None:
            hit[1].state = "finished"
        return
    job = rt.jobs.find(job=event.get("job"))
    if job is None or not (job.active or job.held):
        return
    rt.results[job.job] = event
    drop_preview(job)
    try:  # first, whatever happens in the scene: the texture and GLB are kept
        job.result_dir = rt.last_result_dir = str(save_files(preferences.results_dir(preferences.get()) / job.job,
                                                             event))
    except OSError as exc:
        notify("WARNING", f"the result's files could not be saved: {exc}")
    job.state = "finished"
    try:
        # An operator, so that one undo step removes the result; a call from Python only pushes that
        # undo step when asked to (the positional True). A result that cannot land is held, with the reason.
        bpy.ops.latentforge.import_result("EXEC_DEFAULT", True, job=job.job)
    except RuntimeError as exc:  # the operator reported an error
        job.held = f"the result could not be added to the scene ({exc}): Import as New Object, or Discard it"
    if job.held:
        notify("WARNING", job.held)
    _report_end(job)


def _error(rt: Runtime, event: Event) -> None:
    if (hit := _variant(rt, event.get("job"))) is not None:
        job, variant = hit
        variant.state = "cancelled" if event.get("code") == "cancelled" else "failed"
        variant.message = event.get("message", "")
        if job.active and job.group.picked is None:
            _group_ended(job)
        return
    job = rt.jobs.find(job=event.get("job")) or rt.jobs.find(request=event.get("request"))
    if job is None:
        if event.get("code") not in ("not_connected", "timeout"):
            notify("ERROR", event.get("message", "unknown error"))
        return
    if not job.active:
        return
    job.fail(event)
    _report_end(job)


def _report_end(job: Job) -> None:
    drop_preview(job)
    if job.state == "failed":
        notify("ERROR", job.message)
    elif job.state == "cancelled":
        notify("INFO", "the job was cancelled")


HANDLERS: dict[str, Callable[[Runtime, Event], None]] = {
    "connected": _connected, "disconnected": _disconnected, "heartbeat": _heartbeat, "accepted": _accepted,
    "job": _job, "progress": _progress, "result": _result, "error": _error,
}


def preview_name(job: Job) -> str:
    """Each job's own preview image, so that two scenes' jobs do not show each other's."""
    return f"{PREVIEW_IMAGE} {job.request[:8]}"


def show_preview(png: bytes, name: str = PREVIEW_IMAGE) -> str:
    """Replace the preview `name` with this PNG (an icon preview, never a datablock); returns its name."""
    rt = runtime()
    path = rt.preview_dir / f"{bpy.path.clean_name(name)}.png"
    path.write_bytes(png)
    if name in rt.previews:
        del rt.previews[name]
    rt.previews.load(name, str(path), "IMAGE", True)
    return name


def preview(name: str | None) -> bpy.types.ImagePreview | None:
    """The preview shown for a job, if any."""
    rt = RUNTIME
    return rt.previews.get(name) if rt is not None and name else None


def drop_preview(job: Job) -> None:
    """Forget the job's previews (its variants' too): they only show while the job runs."""
    for holder in [job, *(job.group.variants if job.group is not None else ())]:
        forget_preview(holder.preview)
        holder.preview = None


def forget_preview(name: str | None) -> None:
    rt = RUNTIME
    if name is None or rt is None:
        return
    if name in rt.previews:
        del rt.previews[name]
    with contextlib.suppress(OSError):
        (rt.preview_dir / f"{bpy.path.clean_name(name)}.png").unlink()


def pick(rt: Runtime, job: Job, variant: Variant, keep_others: bool) -> None:
    """Finish `variant` of the scene's job: from now on the job is that variant's, whose result lands as any
    job's; the other variants' previews go (and the service cancels those that run, unless `keep_others`)."""
    job.group.picked = variant.job
    kept = rt.preview_dir / f"{bpy.path.clean_name(variant.preview)}.png" if variant.preview else None
    png = kept.read_bytes() if kept is not None and kept.is_file() else None
    drop_preview(job)
    if png is not None:  # the picked draft's last look shows until its finish sends one, under the job's name
        job.preview = show_preview(png, preview_name(job))
    job.job = variant.job
    job.restart()
    if (scene := scene_by_uid(job.scene)) is not None:
        scene.latentforge.job_id = job.job
    rt.connection.finish(variant.job, cancel_others=not keep_others)

