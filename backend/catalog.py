"""What LatentForge offers by name: its tasks, its methods and its quality presets.

One registry each, as plain data (standard library only): the command line reads them for its help and
flags, the service for its welcome and its checks, `backend.compose` to build a job's settings, and the
Blender extension ships this file with the service's client. A task's settings, a method's objective and
its settings table are named here as "module:Class" and imported only when a job needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# limits every side enforces: the client before sending, the service's protocol and the tasks themselves
MAX_PROMPT_CHARS = 1000  # the prompt and the negative prompt each
MAX_SEED = 2**63 - 1  # seeds are 0 … 2^63 − 1: every one a torch generator takes as a signed 64-bit number
MAX_FACES = 2_000_000  # larger meshes are refused: decimate them first
MAX_VERTICES = 3 * MAX_FACES
MIN_EXPORT_FACES = 100  # the smallest face budget an export takes
MAX_LODS = 6  # levels of detail one export writes at most (LOD0 … LOD5)
# a reference image (`--image`, a submit's `image` blob): at most this many pixels a side, this many bytes as sent
MAX_REFERENCE_SIDE = 4096
MAX_REFERENCE_BYTES = 96 << 20
# a reference image's named views → (azimuth, elevation) in degrees, in the asset's own frame (front: its −Y)
IMAGE_VIEWS: dict[str, tuple[float, float]] = {"front": (0.0, 0.0), "right": (90.0, 0.0), "back": (180.0, 0.0),
                                               "left": (-90.0, 0.0), "top": (0.0, 90.0), "bottom": (0.0, -90.0)}


@dataclass(frozen=True)
class Task:
    help: str  # one line, for the command line and the welcome
    module: str  # its config (`CONFIG`) and its entry points (`check_inputs`, `run_task`)
    iterations: str  # the dotted setting that `--iters` and a submit's `iterations` set
    flags: dict[str, str] = field(default_factory=dict)  # its own command-line flags → dotted settings
    # the arrays a submit carries: "sketch" (an optional mesh of primitives), "paint" (the mesh to paint,
    # optional UVs and an optional face selection)
    mesh: str = "sketch"
    later: tuple[str, ...] = ()  # the dotted step counts of its stages after the first, in order
    # the table of its export settings, which change nothing that is trained (a variant's draft takes the
    # draft preset's); None when its export size is part of what it trains (paint's latent texture)
    export: str | None = None


@dataclass(frozen=True)
class Method:
    label: str  # as the add-on's Method list shows it
    objective: str  # "module:Class" of its objective
    description: str


@dataclass(frozen=True)
class Preset:
    label: str
    description: str
    overrides: dict[str, dict] = field(default_factory=dict)  # per task: nested settings over its defaults


TASKS: dict[str, Task] = {
    "generate": Task("text (and sketch) to a textured GLB", "backend.tasks.generate", "optim.iters",
                     {"refine_iters": "refine.iters", "mesh_iters": "mesh.iters", "mesh_resolution": "mesh.resolution",
                      "looseness": "sketch.looseness", "faces": "export.max_faces", "quad": "export.quad",
                      "lods": "export.lods"}, mesh="sketch", later=("refine.iters", "mesh.iters"), export="export"),
    "paint": Task("texture a mesh from a prompt (Latent-Paint), keeping its geometry", "backend.tasks.paint", "iters",
                  {"texture_size": "texture_size", "finetune_iters": "finetune_iters"}, mesh="paint",
                  later=("finetune_iters",)),
}

# command-line flags every task has → dotted settings
COMMON_FLAGS: dict[str, str] = {"prompt": "prompt", "negative": "negative", "seed": "seed", "resolution": "resolution",
                                "method": "objective.name", "perp_neg": "perp_neg", "front": "front_yaw"}
# a submit's fields that are settings of every task → dotted settings (and `iterations` → the task's own)
SUBMIT_SETTINGS: dict[str, str] = {"prompt": "prompt", "negative": "negative", "seed": "seed",
                                   "image_azimuth": "image.azimuth", "image_elevation": "image.elevation"}

METHODS: dict[str, Method] = {
    "sds": Method("SDS", "backend.objectives.sds:SDS", "Score distillation (DreamFusion / Latent-NeRF)"),
    "hifa": Method("HiFA", "backend.objectives.hifa:BGT",
                   "HiFA's multi-step denoising losses and annealed timesteps: sharper, slower"),
    "vsd": Method("VSD", "backend.objectives.vsd:VSD",
                  "ProlificDreamer's variational score distillation: trains a LoRA of the model on the object's "
                  "own views, at a normal guidance scale (7.5): less over-saturated, slower"),
    "csd": Method("CSD", "backend.objectives.csd:CSD",
                  "Classifier score distillation: only the prompt's direction of the prior, without SDS's noise term"),
}
DEFAULT_METHOD = "sds"

PRESETS: dict[str, Preset] = {
    "draft": Preset("Draft", "Fewer steps, coarser mesh and texture: minutes on a GPU", {
        "generate": {
            "optim": {"iters": 1500},
            "refine": {"iters": 0},
            "mesh": {"iters": 0},  # the export meshes the field directly
            "export": {"grid_resolution": 128, "texture_size": 512, "max_faces": 20_000},
        },
        "paint": {"iters": 1500, "texture_size": 512},
    }),
    # the defaults: generate 5000 latent, 1000 RGB refinement and 1000 mesh steps (512²) and a 1024² texture;
    # paint 5000 steps and a 1024² texture
    "standard": Preset("Standard", "The methods' published settings"),
    "high": Preset("High", "More steps, finer mesh, 2048² texture", {
        "generate": {
            "optim": {"iters": 10_000},
            "refine": {"iters": 2000, "resolution": 512},
            "mesh": {"iters": 2000, "resolution": 512},
            "export": {"grid_resolution": 384, "texture_size": 2048, "max_faces": 150_000},
        },
        "paint": {"iters": 10_000, "texture_size": 2048},
    }),
}
DEFAULT_PRESET = "standard"
# variants run the draft preset's steps of the first stage (and its export settings) before the artist picks one
DRAFT_PRESET = "draft"


def choices(table: dict[str, Method] | dict[str, Preset]) -> list[list[str]]:
    """[[name, label, description], ...] in the registry's order: the welcome's lists for the add-on."""
    return [[name, entry.label, entry.description] for name, entry in table.items()]
