"""Per-scene settings (`scene.latentforge`) and how they become a job for the service."""

from __future__ import annotations

import json
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from ..backend.catalog import MIN_EXPORT_FACES as MIN_FACES
from ..backend.nesting import merge_trees as merge
from . import choices

TEXTURE_SIZES = (512, 1024, 2048, 4096)
# game-ready output: the service's own ceilings (`welcome.limits.ceilings`) are checked again when it gets the job
MAX_FACES, MAX_LODS = 500_000, 4


def _method_items(_self: Any, _context: Any) -> list[tuple]:
    return choices.enum_items("methods")


def _preset_items(_self: Any, _context: Any) -> list[tuple]:
    return choices.enum_items("presets")


def _get_method(self: Any) -> int:
    return choices.index("methods", self.method_name)


def _set_method(self: Any, value: int) -> None:
    self.method_name = choices.names("methods")[value]


def _get_quality(self: Any) -> int:
    return choices.index("presets", self.quality_name)


def _set_quality(self: Any, value: int) -> None:
    self.quality_name = choices.names("presets")[value]


class LatentForgeSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. \"a teddy bear\"", maxlen=1000)
    negative: StringProperty(name="Negative", description="What to avoid, e.g. \"blurry, low quality\"",
                             maxlen=1000)
    mode: EnumProperty(
        name="Mode",
        items=(
            ("GENERATE", "From Sketch", "Generate a new object that follows the selected primitives", "MESH_ICOSPHERE",
             0),
            ("PAINT", "Paint", "Texture the selected mesh; its shape stays as it is", "BRUSH_DATA", 1),
            ("TEXT", "Text Only", "Generate from the prompt alone, at the 3D cursor", "FONT_DATA", 2),
        ),
        default="GENERATE",
    )
    # the lists come from the server (`choices`); the chosen names are kept as text, so a list that changes
    # with the server keeps the artist's choice where the new server offers it
    method_name: StringProperty(default=choices.DEFAULTS["methods"], options={"HIDDEN"})
    quality_name: StringProperty(default=choices.DEFAULTS["presets"], options={"HIDDEN"})
    method: EnumProperty(name="Method", description="How the prompt steers the optimisation (the server's methods)",
                         items=_method_items, get=_get_method, set=_set_method)
    quality: EnumProperty(name="Quality", description="A preset schedule for the job (the server's presets)",
                          items=_preset_items, get=_get_quality, set=_set_quality)
    seed: IntProperty(name="Seed", description="Same seed and settings give the same result", min=0, default=0)
    variants: IntProperty(name="Variants", min=1, max=16, default=1,
                          description="Seeds to try side by side (Seed, Seed + 1, …) as quick drafts on the server's "
                                      "workers: pick the one to finish. 1: a single job")
    draft_steps: IntProperty(name="Draft Steps", min=0, max=1_000_000, default=0,
                             description="Optimisation steps each variant's draft runs before you pick one (0: the "
                                         "Draft quality's)")
    keep_variants: BoolProperty(name="Keep Other Variants", default=False,
                                description="When you pick a variant, let the others run on (their drafts stay on the "
                                            "server) instead of cancelling them")
    looseness: FloatProperty(
        name="Follow Loosely",
        description="How far from the sketch's surface the shape may wander (in units where the sketch fits a "
                    "sphere of radius 0.7): small follows the sketch tightly, large treats it as a rough hint",
        min=0.01, max=2.0, default=0.3, precision=2, step=5,
    )
    texture_size: EnumProperty(
        name="Texture",
        items=(("0", "From Quality", "The quality preset's texture size"),
               *((str(s), f"{s} px", f"{s} × {s} texture") for s in TEXTURE_SIZES)),
        default="0",
    )
    shared_mesh: EnumProperty(
        name="Shared Mesh",
        description="What Paint does with a mesh that other objects show too (linked duplicates)",
        items=(("SINGLE", "Make Single User", "Give the painted object its own copy of the mesh first: the others "
                                              "keep theirs as they are"),
               ("ALL", "Paint All Users", "Paint the shared mesh, so every object that shows it changes (Paint "
                                          "asks first)")),
        default="SINGLE",
    )
    iterations: IntProperty(name="Iterations", description="Optimisation steps (0: the quality preset's)",
                            min=0, max=1_000_000, default=0)
    mesh_iterations: IntProperty(name="Mesh Steps",
                                 description="Mesh refinement steps on the extracted surface (−1: the quality "
                                             "preset's, 0: skip, the mesh is then cut from the field directly)",
                                 min=-1, max=1_000_000, default=-1)
    faces: IntProperty(name="Faces", description="Face budget of the result, simplified from the full surface whose "
                       "detail goes into a normal map (0: the quality preset's; with Quads it counts quads)",
                       min=0, max=MAX_FACES, default=0)
    quads: BoolProperty(name="Quads", description="A quad-dominant remesh at the face budget (Instant Meshes): "
                                                  "real quads in Blender", default=False)
    lods: IntProperty(name="LODs", description="Levels of detail, each half the faces of the one before, as objects "
                                               "NAME_LOD0 … in one collection with LOD0 shown",
                      min=1, max=MAX_LODS, default=1)
    # the reference image when no Image Empty is selected (a selected one gives its image and its facing)
    image_source: EnumProperty(
        name="Reference",
        description="An image of the asset that steers the job: its view is fitted to it, the prompt shapes the rest",
        items=(("NONE", "None", "No reference image (select an Image Empty to use its image and facing)"),
               ("IMAGE", "Image", "An image in this file"),
               ("FILE", "File", "A PNG or JPEG file")),
        default="NONE",
    )
    reference_image: PointerProperty(name="Image", type=bpy.types.Image,
                                     description="The reference image: its alpha is the mask, else its border's "
                                                 "colour is the background")
    reference_file: StringProperty(name="File", subtype="FILE_PATH",
                                   description="A PNG or JPEG of the asset: its alpha is the mask, else its "
                                               "border's colour is the background")
    image_azimuth: FloatProperty(name="Azimuth", description="Where the image was seen from: degrees about the "
                                 "up axis from the asset's front (its −Y), 90 is its right side",
                                 min=-180.0, max=180.0, default=0.0, precision=1)
    image_elevation: FloatProperty(name="Elevation", description="Where the image was seen from: degrees above "
                                   "the horizontal", min=-90.0, max=90.0, default=0.0, precision=1)
    extra_json: StringProperty(
        name="Extra Settings",
        description="Any service setting as JSON, merged last, e.g. {\"objective\": {\"guidance_scale\": 50}}",
    )
    show_advanced: BoolProperty(name="Advanced", default=False)
    job_id: StringProperty(name="Job", description="The service's id of this scene's latest job (saved with the "
                                                   "file, so a result can be fetched after reopening it)")
    fetch_job_id: StringProperty(name="Job ID", description="Id of a finished job to bring into the scene")

    def extra_overrides(self) -> dict[str, Any]:
        """The Extra Settings JSON as a dict; raises ValueError with the position of a typo."""
        if not self.extra_json.strip():
            return {}
        try:
            value = json.loads(self.extra_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Extra Settings is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("Extra Settings must be a JSON object, e.g. {\"refine\": {\"iters\": 0}}")
        return value

    def game_ready(self) -> dict[str, Any]:
        """The export settings of Faces, Quads and LODs; raises ValueError for a budget under the minimum."""
        export: dict[str, Any] = {}
        if self.faces:
            if self.faces < MIN_FACES:
                raise ValueError(f"Faces is {self.faces}: give at least {MIN_FACES}, or 0 for the quality preset's")
            export["max_faces"] = self.faces
        if self.quads:
            export["quad"] = True
        if self.lods > 1:
            export["lods"] = self.lods
        return {"export": export} if export else {}

    def submit_fields(self, task: str) -> dict[str, Any]:
        """The header fields of a `generate` or `paint` submit (see PROTOCOL.md), without the mesh arrays."""
        overrides: dict[str, Any] = {}
        if task == "generate" and self.mode == "GENERATE":
            overrides["sketch"] = {"looseness": round(self.looseness, 4)}
        if task == "generate" and self.mesh_iterations >= 0:
            overrides["mesh"] = {"iters": self.mesh_iterations}
        if task == "generate":
            overrides = merge(overrides, self.game_ready())
        if self.texture_size != "0":  # generate bakes it at export; paint decodes its latent texture to it
            size = int(self.texture_size)
            overrides |= {"texture_size": size} if task == "paint" else {"export": {"texture_size": size}}
        fields: dict[str, Any] = {
            "task": task, "prompt": self.prompt.strip(), "negative": self.negative.strip(),
            "method": self.method, "preset": self.quality, "seed": self.seed,
            "overrides": merge(overrides, self.extra_overrides()),
        }
        if self.iterations:
            fields["iterations"] = self.iterations
        if self.variants > 1:
            fields["variants"] = self.variants
            if self.draft_steps:
                fields["draft_iterations"] = self.draft_steps
        return fields
