"""Operators: Generate, Paint, Cancel, Reconnect, Fetch, Open Results, start/stop a local server, and
the internal ones the timer uses (adding a result as one undo step, status-bar messages)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from bpy.props import EnumProperty, StringProperty

from . import geometry, painting, preferences, results, timers
from .addresses import parse_address
from .jobs import Job
from .local_backend import serve_command
from .properties import merge

JOB_ID_CHARS = 32


def _not_ready(context: bpy.types.Context) -> str | None:
    """Why no job can start in this scene now, or None."""
    rt = timers.RUNTIME
    if rt is None:
        return "The LatentForge add-on is not running"
    if not rt.server.connected:
        return f"No server: {rt.server.message}"
    if rt.jobs.active(context.scene.session_uid) is not None:
        return "A job is running in this scene: wait for it or cancel it"
    return None


class _SubmitJob(bpy.types.Operator):
    """Shared by Generate and Paint: checks, geometry out, one job per scene."""

    bl_options = {"REGISTER"}
    task = "generate"

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        settings = context.scene.latentforge
        if problem := _not_ready(context):
            return problem
        if not settings.prompt.strip():
            return "Type a prompt first"
        if cls.task == "paint":
            return geometry.selection_problem(context.selected_objects, single=True)
        if settings.mode == "PAINT":
            return "The mode is Paint: press Paint, or choose From Sketch or Text Only to generate"
        if settings.mode == "GENERATE":
            return geometry.selection_problem(context.selected_objects)
        return None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if problem := cls.problem(context):
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if problem := self.problem(context):  # poll is skipped when a script calls us with a context
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        settings = context.scene.latentforge
        job = Job(scene=context.scene.session_uid, task=self.task, prompt=settings.prompt.strip())
        try:
            fields = settings.submit_fields(self.task)
            job.extra = settings.extra_overrides()  # an error about one of these points back to them
            arrays = self.arrays(context, job)
            # view prompts follow the front the artist gave the sketch or mesh; Extra Settings still win
            fields["overrides"] = merge({"front_yaw": geometry.front_of(context)}, fields["overrides"])
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        rt = timers.runtime()
        rt.jobs.add(job)
        rt.connection.submit(job.request, fields, arrays)
        self.report({"INFO"}, f"LatentForge: sent \"{job.prompt}\"")
        return {"FINISHED"}

    def arrays(self, context: bpy.types.Context, job: Job) -> dict[str, np.ndarray]:
        if context.scene.latentforge.mode == "TEXT":  # the asset goes to the 3D cursor
            job.anchor = tuple(context.scene.cursor.location)
            return {}
        objects = list(context.selected_objects)
        sketch = geometry.export_objects(objects, context.evaluated_depsgraph_get())
        job.sketch = [obj.session_uid for obj in objects]
        job.anchor = tuple(float(c) for c in sketch.center())
        return {"vertices": sketch.vertices, "faces": sketch.faces}


class LATENTFORGE_OT_generate(_SubmitJob):
    """Generate a textured mesh from the prompt, shaped by the selected primitives (or from text only)"""

    bl_idname = "latentforge.generate"
    bl_label = "Generate"


class LATENTFORGE_OT_paint(_SubmitJob):
    """Paint a texture on the selected mesh from the prompt; its shape stays as it is"""

    bl_idname = "latentforge.paint"
    bl_label = "Paint"
    task = "paint"

    def arrays(self, context: bpy.types.Context, job: Job) -> dict[str, np.ndarray]:
        obj = context.selected_objects[0]
        if obj.mode == "EDIT":
            obj.update_from_editmode()  # edits and the selection live in the edit mesh until written back
        mesh = geometry.export_objects([obj], context.evaluated_depsgraph_get(), with_uvs=True)
        selected = geometry.selected_triangles(obj, mesh)  # Edit Mode: only the selected faces
        job.paint, mesh, appearance = painting.plan_paint(obj, mesh, selected)  # through the UV map chosen
        for note in job.paint.notes:
            self.report({"WARNING"}, note)
        vertices, faces, uvs = geometry.per_vertex_uvs(mesh)
        job.target, job.loops = obj.session_uid, mesh.loops
        arrays = {"vertices": vertices, "faces": faces} | ({"uvs": uvs} if uvs is not None else {})
        arrays |= {"appearance": appearance} if appearance is not None else {}
        return arrays | ({"selected_faces": selected} if selected is not None else {})


class LATENTFORGE_OT_cancel(bpy.types.Operator):
    """Stop this scene's job on the server"""

    bl_idname = "latentforge.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        rt = timers.RUNTIME
        if rt is None or rt.jobs.active(context.scene.session_uid) is None:
            cls.poll_message_set("No job is running in this scene")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        rt = timers.runtime()
        job = rt.jobs.active(context.scene.session_uid)
        job.cancel_requested = True
        if job.job is not None and rt.connection is not None:
            rt.connection.cancel(job.job)
        # else: the submit has not been answered yet; the cancel follows the job's id (timers._accepted)
        self.report({"INFO"}, "LatentForge: cancelling")
        return {"FINISHED"}


class LATENTFORGE_OT_reexport(bpy.types.Operator):
    """Make the surface of the job's trained field at a lower (or higher) density threshold, without
    training again: the server kept the field when the export found no surface"""

    bl_idname = "latentforge.reexport"
    bl_label = "Re-export"

    @staticmethod
    def failed_job(context: bpy.types.Context) -> Job | None:
        rt = timers.RUNTIME
        job = rt.jobs.get(context.scene.session_uid) if rt is not None else None
        return job if job is not None and job.job is not None and job.reexport_threshold is not None else None

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        if cls.failed_job(context) is None:
            return "No job in this scene has a trained field to export again"
        return _not_ready(context)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if problem := cls.problem(context):
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if problem := self.problem(context):
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        job = self.failed_job(context)
        threshold = job.reexport_threshold
        job.restart()
        timers.runtime().connection.reexport(job.job, {"density_threshold": threshold})
        self.report({"INFO"}, f"LatentForge: exporting the trained field again at density {threshold:g}")
        return {"FINISHED"}


class LATENTFORGE_OT_reconnect(bpy.types.Operator):
    """Connect to the server again with the current preferences"""

    bl_idname = "latentforge.reconnect"
    bl_label = "Reconnect"

    def execute(self, _context: bpy.types.Context) -> set[str]:
        timers.restart_connection()
        return {"FINISHED"}


class LATENTFORGE_OT_fetch(bpy.types.Operator):
    """Bring a job's result into this scene by its id (e.g. one that finished while Blender was closed)"""

    bl_idname = "latentforge.fetch"
    bl_label = "Fetch Result"

    job: StringProperty(name="Job ID", description="Empty: the id in the panel's Job ID field")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if problem := _not_ready(context):
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentforge
        job_id = (self.job or settings.fetch_job_id or settings.job_id).strip().lower()
        if len(job_id) != JOB_ID_CHARS or any(c not in "0123456789abcdef" for c in job_id):
            self.report({"ERROR"}, f"\"{job_id}\" is not a job id (32 hexadecimal characters)")
            return {"CANCELLED"}
        rt = timers.runtime()
        job = rt.jobs.add(Job(scene=context.scene.session_uid, task="fetch", job=job_id, state="queued",
                              anchor=(0.0, 0.0, 0.0)))
        rt.connection.fetch(job.job)
        return {"FINISHED"}


def save_result_files(folder: Path, event: dict[str, Any]) -> Path:
    """The texture and, where this computer can reach it, the GLB, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "texture.png").write_bytes(event["blobs"]["texture"])
    for tile, png in event.get("tiles", {}).items():  # a UDIM paint's tiles
        (folder / f"texture.{tile}.png").write_bytes(png)
    if glb := event.get("blobs", {}).get("glb"):
        (folder / "asset.glb").write_bytes(glb)
    elif (path := event.get("glb_path")) and Path(path).is_file():  # a local server's own copy
        shutil.copyfile(path, folder / "asset.glb")
    return folder


class LATENTFORGE_OT_import_result(bpy.types.Operator):
    """Add a finished job's result to its scene (one undo step)"""

    bl_idname = "latentforge.import_result"
    bl_label = "Add LatentForge Result"
    bl_options = {"INTERNAL", "UNDO"}

    job: StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        rt = timers.runtime()
        event, job = rt.results.get(self.job), rt.jobs.find(job=self.job)
        if event is None or job is None:
            self.report({"ERROR"}, f"no result waiting for job {self.job}")
            return {"CANCELLED"}
        try:
            obj = self.add(context, job, event)
            obj[results.JOB_PROPERTY] = job.job
            job.result_dir = str(save_result_files(preferences.results_dir(preferences.get()) / job.job, event))
        except (ValueError, KeyError, OSError) as exc:
            self.report({"ERROR"}, f"the result could not be added: {exc}")
            return {"CANCELLED"}
        rt.last_result_dir = job.result_dir
        job.state = "finished"
        with contextlib.suppress(RuntimeError):  # raised when the result is not in this view layer
            obj.select_set(True)  # the result becomes the selection, as any new object does
            for other in context.selected_objects:
                if other != obj:
                    other.select_set(False)
            context.view_layer.objects.active = obj
        self.report({"INFO"}, f"LatentForge: \"{obj.name}\" is ready")
        return {"FINISHED"}

    @staticmethod
    def add(context: bpy.types.Context, job: Job, event: dict[str, Any]) -> bpy.types.Object:
        scene = timers.scene_by_uid(job.scene) or context.scene
        arrays, texture = event["arrays"], event["blobs"]["texture"]
        vertices, faces, uvs = np.asarray(arrays["vertices"], dtype=np.float32), arrays["faces"], arrays.get("uvs")
        target = timers.object_by_uid(job.target) if job.target is not None else None
        if target is not None and uvs is not None and job.paint is not None and len(faces) == len(job.loops):
            return painting.apply_painted(target, job, uvs[faces], texture, event.get("tiles", {}))
        sketch = [o for uid in job.sketch if (o := timers.object_by_uid(uid)) is not None]
        world, anchor = placement(job, vertices)
        return results.import_generated(scene, job.prompt, world, faces, uvs, texture, anchor, sketch,
                                        normal_png=event["blobs"].get("normal_map"))


def placement(job: Job, vertices: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """World-space vertices and the new object's origin. A sketch's result comes back in world space
    (origin: the sketch's centre); a text-only result is centred on the origin, so it moves to the 3D
    cursor; a fetched one (nothing known about it) stays where it is, its origin at its centre."""
    if job.task == "fetch" or not len(vertices):
        center = (vertices.min(0) + vertices.max(0)) / 2 if len(vertices) else np.zeros(3)
        return vertices, tuple(float(c) for c in center)
    if job.sketch:
        return vertices, job.anchor
    return vertices + np.asarray(job.anchor, dtype=np.float32), job.anchor


class LATENTFORGE_OT_open_results(bpy.types.Operator):
    """Open the folder with the last result's texture and GLB"""

    bl_idname = "latentforge.open_results"
    bl_label = "Open Result Folder"

    @staticmethod
    def folder(context: bpy.types.Context) -> str | None:
        rt = timers.RUNTIME
        if rt is None:
            return None
        job = rt.jobs.get(context.scene.session_uid)
        return (job.result_dir if job is not None else None) or rt.last_result_dir

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if cls.folder(context) is None:
            cls.poll_message_set("No result yet in this Blender session")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return bpy.ops.wm.path_open(filepath=self.folder(context))


class LATENTFORGE_OT_start_server(bpy.types.Operator):
    """Start a LatentForge server on this computer with the backend's Python from the preferences"""

    bl_idname = "latentforge.start_server"
    bl_label = "Start Local Server"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        prefs = preferences.get(context)
        rt = timers.RUNTIME
        problem = None
        if rt is not None and rt.backend.running:
            problem = "The local server is running"
        elif not prefs.backend_python:
            problem = "Set the backend's Python in the add-on preferences first"
        else:
            try:
                if not parse_address(prefs.server_address).is_loopback:
                    problem = "The server address is another computer's: a local server needs 127.0.0.1"
            except ValueError as exc:
                problem = str(exc)
        if problem:
            cls.poll_message_set(problem)
        return problem is None

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences.get(context)
        command = serve_command(bpy.path.abspath(prefs.backend_python), prefs.server_address, prefs.backend_args)
        log = Path(bpy.utils.extension_path_user(preferences.PACKAGE, create=True)) / "server.log"
        try:
            timers.runtime().backend.start(command, log)
        except OSError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        timers.restart_connection()
        self.report({"INFO"}, f"LatentForge: starting a local server (log: {log})")
        return {"FINISHED"}


class LATENTFORGE_OT_stop_server(bpy.types.Operator):
    """Stop the local server this add-on started"""

    bl_idname = "latentforge.stop_server"
    bl_label = "Stop Local Server"

    @classmethod
    def poll(cls, _context: bpy.types.Context) -> bool:
        rt = timers.RUNTIME
        if rt is None or not rt.backend.running:
            cls.poll_message_set("No local server was started from Blender")
            return False
        return True

    def execute(self, _context: bpy.types.Context) -> set[str]:
        timers.runtime().backend.stop()
        return {"FINISHED"}


class LATENTFORGE_OT_notify(bpy.types.Operator):
    """Show a message in the status bar (used by the event timer)"""

    bl_idname = "latentforge.notify"
    bl_label = "LatentForge Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[(k, k.title(), "") for k in ("INFO", "WARNING", "ERROR")])
    message: StringProperty()

    def execute(self, _context: bpy.types.Context) -> set[str]:
        self.report({self.level}, f"LatentForge: {self.message}")
        return {"FINISHED"}


CLASSES = (
    LATENTFORGE_OT_generate, LATENTFORGE_OT_paint, LATENTFORGE_OT_cancel, LATENTFORGE_OT_reexport,
    LATENTFORGE_OT_reconnect,
    LATENTFORGE_OT_fetch, LATENTFORGE_OT_import_result, LATENTFORGE_OT_open_results,
    LATENTFORGE_OT_start_server, LATENTFORGE_OT_stop_server, LATENTFORGE_OT_notify,
)
