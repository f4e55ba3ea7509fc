"""View3D › Sidebar › LatentForge: server status, prompt and settings, progress, previews (each variant's, side by
side, to pick one from), errors."""

from __future__ import annotations

import textwrap

import bpy

from . import geometry, identity, reference, runtime
from .jobs import Job
from .landing import scene_by_uid

WRAP_CHARS = 42  # the sidebar's default width; error text is wrapped, never cut


def wrapped(layout: bpy.types.UILayout, text: str, icon: str = "NONE") -> None:
    """Long text as several labels (a label does not wrap), the icon on the first line only."""
    col = layout.column(align=True)
    for i, line in enumerate(textwrap.wrap(text, WRAP_CHARS) or [""]):
        col.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


def paint_scope(context: bpy.types.Context) -> str | None:
    """How many faces Paint will paint: the Edit Mode selection, else the whole mesh (or why it cannot)."""
    objects = geometry.sent_objects(context.selected_objects)
    if len(objects) != 1 or objects[0].type != "MESH":
        return None
    if problem := geometry.modifier_problem(objects[0], context.evaluated_depsgraph_get()):
        return problem
    painted, total = geometry.painted_polygons(objects[0])
    if painted == total:
        return f"Paints all {total} faces"
    return f"Paints {painted} of {total} faces (the Edit Mode selection)"


def from_a_closed_file(rt: runtime.Runtime) -> Job | None:
    """A result that waits while its scene's file is closed: shown in any scene, so it can be kept here too."""
    return next((j for j in rt.jobs.all() if j.held and scene_by_uid(j.scene) is None), None)


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LatentForge"


class VIEW3D_PT_latentforge(_Sidebar, bpy.types.Panel):
    bl_label = "LatentForge"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        rt = runtime.RUNTIME
        if rt is None:
            layout.label(text="The add-on is not running", icon="ERROR")
            return
        self.draw_server(layout, rt)
        settings = context.scene.latentforge
        col = layout.column(align=True)
        col.prop(settings, "prompt", text="", icon="OUTLINER_OB_FONT", placeholder="A prompt, e.g. a teddy bear")
        col.prop(settings, "negative", text="", icon="CANCEL", placeholder="Negative prompt (optional)")
        layout.row().prop(settings, "mode", expand=True)
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(settings, "method")
        col.prop(settings, "quality")
        col.prop(settings, "seed")
        col.prop(settings, "variants")
        if settings.mode == "GENERATE":
            col.prop(settings, "looseness")
        col.prop(settings, "texture_size")
        if settings.mode != "PAINT":
            col.prop(settings, "faces")
            row = col.row(heading="Game-ready")
            row.prop(settings, "quads")
            col.prop(settings, "lods")
        layout.label(text=geometry.front_label(geometry.front_of(context)), icon="ORIENTATION_VIEW")
        self.draw_reference(layout, context)
        row = layout.row()
        row.scale_y = 1.5
        if settings.mode == "PAINT":
            row.operator("latentforge.paint", icon="BRUSH_DATA")
            if (line := paint_scope(context)) is not None:
                wrapped(layout, line, icon="FACESEL")
            self.draw_shared(layout, context)
        else:
            row.operator("latentforge.generate", icon="PLAY")
        if (job := rt.jobs.get(context.scene.session_uid) or from_a_closed_file(rt)) is not None:
            self.draw_job(layout, job, rt.server.connected, context)

    @staticmethod
    def draw_shared(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
        """A mesh other objects show too: say so, and what Paint does about it."""
        objects = geometry.sent_objects(context.selected_objects)
        if len(objects) != 1 or objects[0].type != "MESH":
            return
        users = identity.mesh_users(objects[0].data)
        if len(users) > 1:
            wrapped(layout, f"The mesh is shared by {len(users)} objects", icon="LINKED")
            layout.prop(context.scene.latentforge, "shared_mesh", text="")

    @staticmethod
    def draw_reference(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
        """The reference image: a selected Image Empty's, else the one picked here; a thumbnail and its view."""
        settings = context.scene.latentforge
        found = reference.reference_of(context)
        box = layout.box()
        if found is not None and found.source.startswith("Image Empt"):
            box.label(text=f"Reference: {found.source}", icon="IMAGE_REFERENCE")
        else:
            box.row().prop(settings, "image_source", expand=True)
            if settings.image_source == "IMAGE":
                box.template_ID(settings, "reference_image", open="image.open")
            elif settings.image_source == "FILE":
                box.prop(settings, "reference_file", text="")
            if settings.image_source != "NONE":
                row = box.row(align=True)
                row.prop(settings, "image_azimuth")
                row.prop(settings, "image_elevation")
        if found is None:
            return
        if found.problem:
            wrapped(box, found.problem, icon="ERROR")
            return
        if icon := found.thumbnail():
            box.template_icon(icon_value=icon, scale=6.0)
        box.label(text=found.view_label(), icon="ORIENTATION_VIEW")

    @staticmethod
    def draw_server(layout: bpy.types.UILayout, rt: runtime.Runtime) -> None:
        box = layout.box()
        row = box.row()
        if rt.server.connected:
            row.label(text=rt.server.summary(), icon="CHECKMARK")
        else:
            row.label(text="Not connected", icon="ERROR")
        row.operator("latentforge.reconnect", text="", icon="FILE_REFRESH")
        if rt.server.connected:
            for line in rt.server.details():
                wrapped(box, line)
        else:
            wrapped(box, rt.server.message)
            row = box.row()
            if rt.backend.running:
                row.operator("latentforge.stop_server", icon="PAUSE")
            else:
                row.operator("latentforge.start_server", icon="PLAY")

    @staticmethod
    def draw_job(layout: bpy.types.UILayout, job: Job, connected: bool, context: bpy.types.Context) -> None:
        box = layout.box()
        if job.prompt:
            box.label(text=f"\u201c{job.prompt}\u201d", icon="INFO")
        if job.active and job.group is not None and job.group.picked is None:
            VIEW3D_PT_latentforge.draw_variants(box, job)
        elif job.active:
            row = box.row(align=True)
            row.progress(factor=job.fraction, type="BAR", text=job.progress_text())
            row.operator("latentforge.cancel", text="", icon="X")
            if job.cancel_requested:
                box.label(text="Cancelling…")
            if not connected:  # the last progress stays as it was: say it is not live
                wrapped(box, "The server is not answering: the job goes on there, and its progress comes back "
                             "with the connection", icon="ERROR")
        elif job.held:
            VIEW3D_PT_latentforge.draw_held(box, job, context)
        elif job.state == "finished":
            box.label(text="Done: the result is in the scene", icon="CHECKMARK")
            box.operator("latentforge.open_results", icon="FILE_FOLDER")
        elif job.state == "cancelled":
            box.label(text="Cancelled", icon="CANCEL")
        else:
            wrapped(box, job.message, icon="ERROR")
            if (threshold := job.reexport_threshold) is not None:
                box.operator("latentforge.reexport", text=f"Re-export at {threshold:g}", icon="MOD_REMESH")
        for note in job.paint.notes if job.paint is not None else ():  # slots kept as their viewport colour
            wrapped(box, note, icon="INFO")
        if job.job:
            box.label(text=f"Job {job.job}")
        if job.active and (shown := runtime.preview(job.preview)) is not None:
            box.template_icon(icon_value=shown.icon_id, scale=10.0)

    @staticmethod
    def draw_held(box: bpy.types.UILayout, job: Job, context: bpy.types.Context) -> None:
        """A result that could not land by itself: why, and what can be done with it."""
        wrapped(box, job.held, icon="ERROR")
        col = box.column(align=True)
        col.operator("latentforge.import_result", text="Try Again", icon="FILE_REFRESH").job = job.job
        active = context.active_object
        # (drawing may not write Edit Mode's mesh back; the face count first spares a redraw hashing a large mesh)
        if job.paint is not None and active is not None and active.type == "MESH" and active.mode != "EDIT" and \
                len(active.data.polygons) == job.faces_then and identity.topology(active.data) == job.topology:
            apply = col.operator("latentforge.import_result", text=f"Apply to \u201c{active.name}\u201d",
                                 icon="BRUSH_DATA")
            apply.job, apply.how = job.job, "ACTIVE"
        new = col.operator("latentforge.import_result", text="Import as New Object", icon="IMPORT")
        new.job, new.how = job.job, "NEW"
        col.operator("latentforge.discard_result", icon="TRASH").job = job.job


    @staticmethod
    def draw_variants(layout: bpy.types.UILayout, job: Job) -> None:
        """Each variant's latest preview and seed, side by side; its button finishes it."""
        row = layout.row()
        row.label(text="Pick a variant to finish" if job.group.ready else "Drafting variants…", icon="IMGDISPLAY")
        row.operator("latentforge.cancel", text="", icon="X")
        grid = layout.grid_flow(row_major=True, columns=2, even_columns=True, align=True)
        for variant in job.group.variants:
            col = grid.column(align=True)
            if (shown := runtime.preview(variant.preview)) is not None:
                col.template_icon(icon_value=shown.icon_id, scale=5.0)
            else:
                col.label(text="", icon="TIME")
            button = col.row()
            button.enabled = variant.pickable
            button.operator("latentforge.pick_variant", text=variant.label()).job = variant.job


class VIEW3D_PT_latentforge_advanced(_Sidebar, bpy.types.Panel):
    bl_label = "Advanced"
    bl_parent_id = "VIEW3D_PT_latentforge"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.latentforge
        layout = self.layout
        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(settings, "iterations")
        if settings.mode != "PAINT":
            col.prop(settings, "mesh_iterations")
        col.prop(settings, "draft_steps")
        col.prop(settings, "keep_variants")
        col.prop(settings, "extra_json")
        layout.separator()
        layout.label(text="Fetch a result by job id:")
        row = layout.row(align=True)
        row.prop(settings, "fetch_job_id", text="")
        row.operator("latentforge.fetch", text="", icon="IMPORT")
        if settings.job_id:
            layout.label(text=f"Last job here: {settings.job_id}")
        layout.operator("latentforge.open_results", icon="FILE_FOLDER")


CLASSES = (VIEW3D_PT_latentforge, VIEW3D_PT_latentforge_advanced)
