"""Operators: Generate, Paint, Cancel, Pick a Variant, Reconnect, Fetch, Open Results, start/stop a local server,
and the internal ones the timer uses (adding a result as one undo step, status-bar messages)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import geometry, identity, landing, painting, preferences, reference, results, runtime
from .addresses import parse_address
from .jobs import Job
from .local_backend import serve_command
from .properties import merge

JOB_ID_CHARS = 32


def _not_ready(context: bpy.types.Context) -> str | None:
    """Why no job can start in this scene now, or None."""
    rt = runtime.RUNTIME
    if rt is None:
        return "The LatentForge add-on is not running"
    if not rt.server.connected:
        return f"No server: {rt.server.message}"
    if rt.jobs.active(context.scene.session_uid) is not None:
        return "A job is running in this scene: wait for it or cancel it"
    return None


class _Explained:
    """An operator whose `problem` says why it cannot run: `poll` greys the button out with that reason (shown
    on hover), and `execute`, which a script may call without polling, refuses with it."""

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        return None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if problem := cls.problem(context):
            cls.poll_message_set(problem)
            return False
        return True

    def refused(self, context: bpy.types.Context) -> bool:
        """True (after reporting why) when the operator cannot run now."""
        if problem := self.problem(context):
            self.report({"ERROR"}, problem)
            return True
        return False


class _SubmitJob(_Explained, bpy.types.Operator):
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
        sent = geometry.sent_objects(context.selected_objects)
        if cls.task == "paint":
            problem = geometry.selection_problem(sent, single=True) or \
                geometry.modifier_problem(sent[0], context.evaluated_depsgraph_get())
        elif settings.mode == "PAINT":
            return "The mode is Paint: press Paint, or choose From Sketch or Text Only to generate"
        else:
            problem = geometry.selection_problem(sent) if settings.mode == "GENERATE" else None
        if problem is None and (found := reference.reference_of(context)) is not None:
            problem = found.problem
        return problem

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        settings = context.scene.latentforge
        job = Job(scene=context.scene.session_uid, task=self.task, prompt=settings.prompt.strip(),
                  file=bpy.data.filepath, load=runtime.runtime().file_load)
        try:
            fields = settings.submit_fields(self.task)
            job.extra = settings.extra_overrides()  # an error about one of these points back to them
            arrays = self.arrays(context, job)
            # view prompts follow the front the artist gave the sketch or mesh; Extra Settings still win
            fields["overrides"] = merge({"front_yaw": geometry.front_of(context)}, fields["overrides"])
            if (found := reference.reference_of(context)) is not None:  # the image and where it was seen from
                arrays |= {"image": reference.image_png(found), "image_view": (found.azimuth, found.elevation)}
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        rt = runtime.runtime()
        rt.jobs.add(job)
        rt.connection.submit(job.request, fields, arrays)
        self.report({"INFO"}, f"LatentForge: sent \"{job.prompt}\"")
        return {"FINISHED"}

    def arrays(self, context: bpy.types.Context, job: Job) -> dict[str, np.ndarray]:
        if context.scene.latentforge.mode == "TEXT":  # the asset goes to the 3D cursor
            job.anchor = tuple(context.scene.cursor.location)
            return {}
        objects = geometry.sent_objects(context.selected_objects)
        sketch = geometry.export_objects(objects, context.evaluated_depsgraph_get())
        job.sketch = [obj.session_uid for obj in objects]
        return {"vertices": relative(sketch.vertices, job), "faces": sketch.faces}


def relative(vertices: np.ndarray, job: Job) -> np.ndarray:
    """World vertices (float64) as sent: relative to their centre, which becomes the job's anchor, so that an
    asset far from the origin keeps its precision in the float32 the service takes."""
    center = (vertices.min(0) + vertices.max(0)) / 2
    job.anchor = tuple(float(c) for c in center)
    return (vertices - center).astype(np.float32)


class LATENTFORGE_OT_generate(_SubmitJob):
    """Generate a textured mesh from the prompt, shaped by the selected primitives (or from text only)"""

    bl_idname = "latentforge.generate"
    bl_label = "Generate"


def shared_with(obj: bpy.types.Object) -> list[bpy.types.Object]:
    """The other objects that show the object's mesh (linked duplicates)."""
    return [o for o in identity.mesh_users(obj.data) if o != obj]


class LATENTFORGE_OT_paint(_SubmitJob):
    """Paint a texture on the selected mesh from the prompt; its shape stays as it is"""

    bl_idname = "latentforge.paint"
    bl_label = "Paint"
    task = "paint"

    confirm_shared: BoolProperty(name="Paint Every User", description="The mesh is shared: paint it for every "
                                 "object that shows it", default=False, options={"SKIP_SAVE", "HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        sent = geometry.sent_objects(context.selected_objects)
        obj = sent[0] if sent else None
        others = shared_with(obj) if obj is not None and obj.type == "MESH" else []
        if others and context.scene.latentforge.shared_mesh == "ALL":
            self.confirm_shared = True
            return context.window_manager.invoke_confirm(
                self, event, title="Paint a shared mesh",
                message=f"The mesh of \u201c{obj.name}\u201d is shared by {len(others) + 1} objects: the paint "
                        "changes every one of them", confirm_text="Paint All")
        return self.execute(context)

    def arrays(self, context: bpy.types.Context, job: Job) -> dict[str, np.ndarray]:
        obj = geometry.sent_objects(context.selected_objects)[0]
        if obj.mode == "EDIT":
            obj.update_from_editmode()  # edits and the selection live in the edit mesh until written back
        others = shared_with(obj)
        shared = context.scene.latentforge.shared_mesh if others else "SINGLE"
        if shared == "ALL" and not self.confirm_shared:
            raise ValueError(f"The mesh of \"{obj.name}\" is shared by {len(others) + 1} objects: confirm painting "
                             "them all (press Paint in the panel), or set Shared Mesh to Make Single User")
        mesh = geometry.export_objects([obj], context.evaluated_depsgraph_get(), with_uvs=True)
        selected = geometry.selected_triangles(obj, mesh)  # Edit Mode: only the selected faces
        job.paint, mesh, appearance = painting.plan_paint(obj, mesh, selected)  # through the UV map chosen
        job.paint.shared = shared
        for note in job.paint.notes:
            self.report({"WARNING"}, note)
        vertices, faces, uvs = geometry.per_vertex_uvs(mesh)
        job.target, job.loops = obj.session_uid, mesh.loops
        arrays = {"vertices": relative(vertices, job), "faces": faces} | ({"uvs": uvs} if uvs is not None else {})
        identity.remember(obj, job)  # the result finds this object by it, even after a restart
        arrays |= {"appearance": appearance} if appearance is not None else {}
        return arrays | ({"selected_faces": selected} if selected is not None else {})


class LATENTFORGE_OT_cancel(_Explained, bpy.types.Operator):
    """Stop this scene's job on the server"""

    bl_idname = "latentforge.cancel"
    bl_label = "Cancel"

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        rt = runtime.RUNTIME
        if rt is None or rt.jobs.active(context.scene.session_uid) is None:
            return "No job is running in this scene"
        return None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        rt = runtime.runtime()
        job = rt.jobs.active(context.scene.session_uid)
        job.cancel_requested = True
        if job.job is not None and rt.connection is not None:
            rt.connection.cancel(job.job)
        # else: the submit has not been answered yet; the cancel follows the job's id (runtime._accepted)
        self.report({"INFO"}, "LatentForge: cancelling")
        return {"FINISHED"}


class LATENTFORGE_OT_pick_variant(_Explained, bpy.types.Operator):
    """Finish this variant: its draft goes on to the quality asked for, and its result lands in the scene"""

    bl_idname = "latentforge.pick_variant"
    bl_label = "Finish Variant"

    job: StringProperty(name="Job ID", description="The variant's job id on the server")

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        rt = runtime.RUNTIME
        job = rt.jobs.active(context.scene.session_uid) if rt is not None else None
        if job is None or job.group is None or job.group.picked is not None:
            return "No variants are waiting for a pick in this scene"
        if not rt.server.connected:
            return f"No server: {rt.server.message}"
        return None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        rt = runtime.runtime()
        job = rt.jobs.active(context.scene.session_uid)
        variant = job.group.find(self.job)
        if variant is None or not variant.pickable:
            self.report({"ERROR"}, f"{self.job!r} is not a variant of this scene's job that can be finished")
            return {"CANCELLED"}
        runtime.pick(rt, job, variant, context.scene.latentforge.keep_variants)
        self.report({"INFO"}, f"LatentForge: finishing seed {variant.seed}")
        return {"FINISHED"}


class LATENTFORGE_OT_reexport(_Explained, bpy.types.Operator):
    """Make the surface of the job's trained field at a lower (or higher) density threshold, without
    training again: the server kept the field when the export found no surface"""

    bl_idname = "latentforge.reexport"
    bl_label = "Re-export"

    @staticmethod
    def failed_job(context: bpy.types.Context) -> Job | None:
        rt = runtime.RUNTIME
        job = rt.jobs.get(context.scene.session_uid) if rt is not None else None
        return job if job is not None and job.job is not None and job.reexport_threshold is not None else None

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        if cls.failed_job(context) is None:
            return "No job in this scene has a trained field to export again"
        return _not_ready(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        job = self.failed_job(context)
        threshold = job.reexport_threshold
        job.restart()
        runtime.runtime().connection.reexport(job.job, {"density_threshold": threshold})
        self.report({"INFO"}, f"LatentForge: exporting the trained field again at density {threshold:g}")
        return {"FINISHED"}


class LATENTFORGE_OT_reconnect(bpy.types.Operator):
    """Connect to the server again with the current preferences"""

    bl_idname = "latentforge.reconnect"
    bl_label = "Reconnect"

    def execute(self, _context: bpy.types.Context) -> set[str]:
        runtime.restart_connection()
        return {"FINISHED"}


class LATENTFORGE_OT_fetch(_Explained, bpy.types.Operator):
    """Bring a job's result into this scene by its id (e.g. one that finished while Blender was closed)"""

    bl_idname = "latentforge.fetch"
    bl_label = "Fetch Result"

    job: StringProperty(name="Job ID", description="Empty: the id in the panel's Job ID field")

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        return _not_ready(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        settings = context.scene.latentforge
        job_id = (self.job or settings.fetch_job_id or settings.job_id).strip().lower()
        if len(job_id) != JOB_ID_CHARS or any(c not in "0123456789abcdef" for c in job_id):
            self.report({"ERROR"}, f"\"{job_id}\" is not a job id (32 hexadecimal characters)")
            return {"CANCELLED"}
        rt, scene = runtime.runtime(), context.scene.session_uid
        known = rt.jobs.find(job=job_id)
        if known is not None and (known.active or known.held):  # followed already: never a second copy
            if landing.scene_by_uid(known.scene) is None:  # its scene's file was closed: it comes here
                rt.jobs.move(known, scene)
            if known.active:
                where = "" if known.scene == scene else " in another scene"
                self.report({"INFO"}, f"LatentForge: job {job_id} is {known.state}{where}; its result lands there")
                return {"FINISHED"}
            return bpy.ops.latentforge.import_result(job=job_id)
        waiting = identity.waiting_for(job_id)  # a paint sent from this file: its result goes on that object
        holder = next((o for o in bpy.data.objects if o.get(results.JOB_PROPERTY) == job_id), None)
        if waiting is None and holder is not None:
            self.report({"INFO"}, f"LatentForge: \u201c{holder.name}\u201d already holds the result of job {job_id}")
            return {"FINISHED"}
        job = identity.job_from_record(waiting, scene, job_id) if waiting is not None else \
            Job(scene=scene, task="fetch", job=job_id, state="queued")
        job.file, job.load = bpy.data.filepath, rt.file_load
        rt.jobs.add(job)
        rt.connection.fetch(job.job)
        return {"FINISHED"}


class LATENTFORGE_OT_import_result(bpy.types.Operator):
    """Add a finished job's result to its scene (one undo step)"""

    bl_idname = "latentforge.import_result"
    bl_label = "Add LatentForge Result"
    bl_options = {"INTERNAL", "UNDO"}

    job: StringProperty()
    how: EnumProperty(items=(
        ("LAND", "Where It Belongs", "On the object it was painted for, or where its sketch was"),
        ("NEW", "Import as New Object", "A new object where the result was made"),
        ("ACTIVE", "Apply to Active", "Paint the active object, whose mesh has the painted topology"),
    ), default="LAND", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        rt = runtime.runtime()
        event, job = rt.results.get(self.job), rt.jobs.find(job=self.job)
        if event is None or job is None:
            self.report({"ERROR"}, f"no result waiting for job {self.job}")
            return {"CANCELLED"}
        try:
            obj = landing.land(context, job, event, self.how, rt.file_load)
            obj[results.JOB_PROPERTY] = job.job
        except landing.Held as held:  # nothing changed: no undo step; the result waits, the panel says why
            job.held = str(held)
            self.report({"WARNING"}, f"LatentForge: {held}")
            return {"CANCELLED"}
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:  # kept: it can still be imported
            job.held = f"the result could not be applied ({exc}): Import as New Object to keep it, or Discard it"
            self.report({"WARNING"}, f"LatentForge: {job.held}")
            return {"CANCELLED"}
        rt.results.pop(job.job, None)
        job.held = None
        job.state = "finished"
        with contextlib.suppress(RuntimeError):  # raised when the result is not in this view layer
            obj.select_set(True)  # the result becomes the selection, as any new object does
            for other in context.selected_objects:
                if other != obj:
                    other.select_set(False)
            context.view_layer.objects.active = obj
        self.report({"INFO"}, f"LatentForge: \u201c{obj.name}\u201d is ready")
        return {"FINISHED"}


class LATENTFORGE_OT_discard_result(bpy.types.Operator):
    """Let go of a result that could not land (its files stay in the result folder; Fetch brings it again)"""

    bl_idname = "latentforge.discard_result"
    bl_label = "Discard"
    bl_options = {"INTERNAL"}

    job: StringProperty()

    def execute(self, _context: bpy.types.Context) -> set[str]:
        rt = runtime.runtime()
        rt.results.pop(self.job, None)
        if (job := rt.jobs.find(job=self.job)) is not None:
            job.held = None
        return {"FINISHED"}


class LATENTFORGE_OT_open_results(_Explained, bpy.types.Operator):
    """Open the folder with the last result's texture and GLB"""

    bl_idname = "latentforge.open_results"
    bl_label = "Open Result Folder"

    @staticmethod
    def folder(context: bpy.types.Context) -> str | None:
        rt = runtime.RUNTIME
        if rt is None:
            return None
        job = rt.jobs.get(context.scene.session_uid)
        return (job.result_dir if job is not None else None) or rt.last_result_dir

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        return "No result yet in this Blender session" if cls.folder(context) is None else None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        return bpy.ops.wm.path_open(filepath=self.folder(context))


class LATENTFORGE_OT_start_server(_Explained, bpy.types.Operator):
    """Start a LatentForge server on this computer with the backend's Python from the preferences"""

    bl_idname = "latentforge.start_server"
    bl_label = "Start Local Server"

    @classmethod
    def problem(cls, context: bpy.types.Context) -> str | None:
        prefs = preferences.get(context)
        rt = runtime.RUNTIME
        if rt is not None and rt.backend.running:
            return "The local server is running"
        if not prefs.backend_python:
            return "Set the backend's Python in the add-on preferences first"
        try:
            if not parse_address(prefs.server_address).is_loopback:
                return "The server address is another computer's: a local server needs 127.0.0.1"
        except ValueError as exc:
            return str(exc)
        return None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        prefs = preferences.get(context)
        command = serve_command(bpy.path.abspath(prefs.backend_python), prefs.server_address, prefs.backend_args)
        log = Path(bpy.utils.extension_path_user(preferences.PACKAGE, create=True)) / "server.log"
        try:
            runtime.runtime().backend.start(command, log)
        except OSError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        runtime.restart_connection()
        self.report({"INFO"}, f"LatentForge: starting a local server (log: {log})")
        return {"FINISHED"}


class LATENTFORGE_OT_stop_server(_Explained, bpy.types.Operator):
    """Stop the local server this add-on started"""

    bl_idname = "latentforge.stop_server"
    bl_label = "Stop Local Server"

    @classmethod
    def problem(cls, _context: bpy.types.Context) -> str | None:
        rt = runtime.RUNTIME
        return "No local server was started from Blender" if rt is None or not rt.backend.running else None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused(context):
            return {"CANCELLED"}
        runtime.runtime().backend.stop()
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
    LATENTFORGE_OT_generate, LATENTFORGE_OT_paint, LATENTFORGE_OT_cancel, LATENTFORGE_OT_pick_variant,
    LATENTFORGE_OT_reexport,
    LATENTFORGE_OT_reconnect,
    LATENTFORGE_OT_fetch, LATENTFORGE_OT_import_result, LATENTFORGE_OT_discard_result, LATENTFORGE_OT_open_results,
    LATENTFORGE_OT_start_server, LATENTFORGE_OT_stop_server, LATENTFORGE_OT_notify,
)
