"""What a mesh's faces look like now, read from its materials, so a paint keeps what it does not paint.

Per material slot: the image that feeds the surface shader's base colour (an Image Texture node, read
through a UV Map node or, without one, the active render UV map), a colour attribute (a Color Attribute
node), or the base colour itself. Anything else (a procedural texture, a mix of several) is taken as the
material's viewport colour, and the panel says so. Colours go out as Blender holds them (PROTOCOL.md):
base colours and colour attributes as linear floats, sRGB byte images as their bytes, float or non-colour
images as linear floats; the service encodes them to display values.

The UV map painted through: the one the painted faces' images read, when they all read one; else the
active render UV map; a mesh without UV maps is unwrapped by the service (a new UV map "LatentForge").
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ..backend.service.protocol import MAX_IMAGE_SIDE, MAX_IMAGES, REQUEST_LIMITS
from .geometry import TriangleMesh

SOURCE_PROPERTY = "latentforge_source"  # on a painted copy: the name of the image (material) it copies
FIRST_TILE = 1001
DEFAULT_LINEAR = (0.8, 0.8, 0.8)  # Blender's surface colour for faces without a material
COLOUR_INPUTS = ("Base Color", "Color")  # the Principled BSDF's, then a Diffuse BSDF's or an Emission's
FLAT, CORNERS = -1, -2  # slot_sources for a flat colour and for a colour attribute (PROTOCOL.md)
# what the mesh's arrays leave of a submit's bytes for its images
IMAGE_BUDGET = REQUEST_LIMITS.max_message_bytes - (32 << 20)


@dataclass
class SlotLook:
    """How one material slot colours its faces."""

    name: str  # the material's name (or "no material")
    color: tuple[float, float, float]  # linear: the base colour, else the viewport colour
    image: bpy.types.Image | None = None
    uv_map: str = ""  # the UV map the image reads ("" = the active render one)
    attribute: str | None = None  # a colour attribute's name ("" = the active render one)
    note: str | None = None  # why the slot is taken as its viewport colour


def _upstream(socket: bpy.types.NodeSocket) -> bpy.types.NodeLink | None:
    """The link feeding a socket, followed back through reroutes."""
    link = socket.links[0] if socket.is_linked else None
    while link is not None and link.from_node.type == "REROUTE":
        inputs = link.from_node.inputs
        link = inputs[0].links[0] if inputs and inputs[0].is_linked else None
    return link


def surface_shader(material: bpy.types.Material) -> bpy.types.Node | None:
    """The node feeding the active material output's Surface."""
    tree = material.node_tree
    outputs = [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"] if tree is not None else []
    output = next((n for n in outputs if n.is_active_output), outputs[0] if outputs else None)
    link = _upstream(output.inputs["Surface"]) if output is not None else None
    return None if link is None else link.from_node


def colour_socket(material: bpy.types.Material) -> bpy.types.NodeSocket | None:
    """The surface shader's base colour input, or None."""
    shader = surface_shader(material)
    return next((shader.inputs[n] for n in COLOUR_INPUTS if n in shader.inputs), None) if shader else None


def slot_look(material: bpy.types.Material | None) -> SlotLook:
    """What a slot's material shows as its base colour."""
    if material is None:
        return SlotLook("no material", DEFAULT_LINEAR)
    viewport = tuple(float(c) for c in material.diffuse_color[:3])

    def unreadable(why: str) -> SlotLook:
        return SlotLook(material.name, viewport, note=f"\u201c{material.name}\u201d is kept around the paint as its "
                                                      f"viewport colour: {why}")

    if material.node_tree is None:
        return SlotLook(material.name, viewport)
    shader = surface_shader(material)
    if shader is None:
        return unreadable("it has no surface shader")
    socket = colour_socket(material)
    if socket is None:
        return unreadable(f"its {shader.bl_label} node has no base colour")
    link = _upstream(socket)
    if link is None:
        return SlotLook(material.name, tuple(float(c) for c in socket.default_value[:3]))
    source = link.from_node
    if source.type == "VERTEX_COLOR":
        return SlotLook(material.name, viewport, attribute=source.layer_name)
    if source.type != "TEX_IMAGE" or link.from_socket.name != "Color":
        return unreadable(f"its base colour comes from a {source.bl_label} node, which LatentForge cannot read")
    if source.image is None:
        return unreadable("its Image Texture node has no image")
    if source.projection != "FLAT":
        return unreadable(f"its image is projected ({source.projection.lower()}), not read through a UV map")
    vector = _upstream(source.inputs["Vector"])
    uv_map = ""
    if vector is not None:
        if vector.from_node.type == "UVMAP":
            uv_map = vector.from_node.uv_map
        elif not (vector.from_node.type == "TEX_COORD" and vector.from_socket.name == "UV"):
            return unreadable(f"its image is placed by a {vector.from_node.bl_label} node, which LatentForge "
                              "cannot read")
    return SlotLook(material.name, viewport, image=source.image, uv_map=uv_map)


@dataclass
class Looks:
    """Every slot's look and each sent triangle's slot."""

    slots: list[SlotLook]
    face_slots: np.ndarray  # [F] int32
    render_uv_map: str | None
    notes: list[str] = field(default_factory=list)

    def uv_map_of(self, slot: int) -> str | None:
        """The UV map a slot's image reads, by name."""
        return self.slots[slot].uv_map or self.render_uv_map

    def paint_uv_map(self, faces: np.ndarray, uv_maps: dict[str, np.ndarray]) -> str | None:
        """The UV map painted through: the one the painted faces' images read, when only one; else the
        active render map; None without UV maps."""
        read = {self.uv_map_of(s) for s in np.unique(self.face_slots[faces]) if self.slots[s].image is not None}
        read.discard(None)
        if len(read) == 1 and next(iter(read)) in uv_maps:
            return next(iter(read))
        return self.render_uv_map if self.render_uv_map in uv_maps else None

    def copied_image(self, faces: np.ndarray, uv_map: str | None) -> bpy.types.Image | None:
        """The image most of the painted faces read through `uv_map`: the painted texture is a copy of it
        (the service copies it byte for byte when its size allows)."""
        counts = Counter(s for s in self.face_slots[faces].tolist()
                         if self.slots[s].image is not None and self.uv_map_of(s) == uv_map)
        return self.slots[counts.most_common(1)[0][0]].image if counts else None


def read_looks(obj: bpy.types.Object, mesh: TriangleMesh) -> Looks:
    """The look of each material slot of `obj` and the slot of each triangle of `mesh` (its export)."""
    slots = [slot_look(s.material) for s in obj.material_slots] or [slot_look(None)]
    indices = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", indices)
    face_slots = np.clip(indices[mesh.polygons], 0, len(slots) - 1).astype(np.int32)  # Blender clamps them too
    used = set(np.unique(face_slots).tolist())
    notes = [look.note for s, look in enumerate(slots) if look.note and s in used]
    return Looks(slots, face_slots, mesh.render_uv_map, notes)


# -- pixels ----------------------------------------------------------------------------------------------


def missing_image(image: bpy.types.Image, material: str) -> ValueError:
    path = bpy.path.abspath(image.filepath) if image.filepath else "(no file)"
    return ValueError(f"The image \u201c{image.name}\u201d of \u201c{material}\u201d is not packed and its file "
                      f"{path} is missing: find it (File \u203a External Data \u203a Find Missing Files) or pack "
                      "it, then paint again")


def pixels(image: bpy.types.Image, material: str) -> np.ndarray:
    """[H, W, 3], row 0 the top (v = 1): an sRGB byte image's bytes (uint8), else linear values (float16)."""
    if image.source == "FILE" and image.packed_file is None and not Path(bpy.path.abspath(image.filepath)).is_file():
        raise missing_image(image, material)
    count = len(image.pixels)  # loads the image
    w, h = image.size
    if not count or not w or not h:
        raise missing_image(image, material)
    if max(w, h) > MAX_IMAGE_SIDE:
        raise ValueError(f"The image \u201c{image.name}\u201d is {w}\u00d7{h}, over the {MAX_IMAGE_SIDE} texels a "
                         "side LatentForge reads: scale it down for painting")
    flat = np.empty(count, np.float32)
    image.pixels.foreach_get(flat)
    rgb = flat.reshape(h, w, image.channels)[::-1, :, :3]
    while rgb.shape[2] < 3:  # a one- or two-channel image is grey
        rgb = np.concatenate([rgb, rgb[..., :1]], 2)
    if not image.is_float and image.colorspace_settings.name == "sRGB":
        out = np.round(rgb * 255).astype(np.uint8)  # byte images hand out their stored bytes / 255
    else:
        out = np.clip(rgb, 0.0, 1.0).astype(np.float16)  # what a texel can show; float16 halves the bytes
    if out.nbytes > REQUEST_LIMITS.max_array_bytes:
        raise ValueError(f"The image \u201c{image.name}\u201d is {w}\u00d7{h}, {out.nbytes / 2**20:,.0f} MB as "
                         f"pixels, over the {REQUEST_LIMITS.max_array_bytes / 2**20:,.0f} MB one image may be: "
                         "scale it down for painting")
    return out


def tile_pixels(image: bpy.types.Image, tile: int, material: str) -> np.ndarray:
    """One UDIM tile of a tiled image, loaded on its own from its packed data or its file."""
    packed = {p.tile_number: p for p in image.packed_files}
    with tempfile.TemporaryDirectory(prefix="latentforge-tile-") as folder:
        if tile in packed:
            path = Path(folder) / f"tile{Path(packed[tile].filepath).suffix or '.png'}"
            path.write_bytes(packed[tile].packed_file.data)
        elif "<UDIM>" in image.filepath:
            path = Path(bpy.path.abspath(image.filepath.replace("<UDIM>", str(tile))))
        elif tile == FIRST_TILE and image.pixels:
            return pixels(image, material)  # a generated tiled image holds its first tile in memory
        else:
            raise ValueError(f"Tile {tile} of the image \u201c{image.name}\u201d is neither saved nor packed: save "
                             "or pack the image, then paint again")
        if not path.is_file():
            raise ValueError(f"Tile {tile} of the image \u201c{image.name}\u201d of \u201c{material}\u201d is not "
                             f"packed and its file {path} is missing: find it or pack the image, then paint again")
        loaded = bpy.data.images.load(str(path), check_existing=False)
        try:
            loaded.colorspace_settings.name = image.colorspace_settings.name
            return pixels(loaded, material)
        finally:
            bpy.data.images.remove(loaded)


def image_tiles(image: bpy.types.Image, material: str) -> dict[int, np.ndarray]:
    """An image's pixels by UDIM tile: a plain image is tile 1001."""
    if image.source != "TILED":
        return {FIRST_TILE: pixels(image, material)}
    return {t.number: tile_pixels(image, t.number, material) for t in image.tiles}


# -- the submit's arrays -------------------------------------------------------------------------------


def colour_attribute(data: bpy.types.Mesh, name: str, loops: np.ndarray) -> np.ndarray | None:
    """[F, 3, 3] a colour attribute's linear RGB at each corner, or None when the mesh has no such attribute."""
    attributes = data.color_attributes
    if not name:
        index = attributes.render_color_index
        name = attributes[index].name if 0 <= index < len(attributes) else ""
    attribute = attributes.get(name)
    if attribute is None:
        return None
    values = np.empty(len(attribute.data) * 4, np.float32)
    attribute.data.foreach_get("color", values)  # linear, whether stored as floats or as sRGB bytes
    values = values.reshape(-1, 4)[:, :3]
    if attribute.domain == "POINT":
        vertex = np.empty(len(data.loops), np.int32)
        data.loops.foreach_get("vertex_index", vertex)
        values = values[vertex]
    return values[loops]


def appearance_arrays(obj: bpy.types.Object, mesh: TriangleMesh, looks: Looks) -> dict[str, np.ndarray]:
    """The paint submit's appearance arrays (PROTOCOL.md) for `mesh`, the export of `obj`."""
    n = len(mesh.faces)
    images: dict[str, int] = {}
    sources = np.full(len(looks.slots), FLAT, np.int32)
    colors = np.array([look.color for look in looks.slots], np.float32)
    image_uvs = np.zeros((n, 3, 2), np.float32)
    corners = np.zeros((n, 3, 3), np.float32)
    arrays: dict[str, np.ndarray] = {}
    used = set(np.unique(looks.face_slots).tolist())
    for s, look in enumerate(looks.slots):
        at = looks.face_slots == s
        if s not in used:
            continue
        if look.attribute is not None:
            values = colour_attribute(obj.data, look.attribute, mesh.loops)
            if values is None:
                looks.notes.append(f"\u201c{look.name}\u201d reads a colour attribute the mesh lacks: it is kept "
                                   "around the paint as its viewport colour")
                continue
            sources[s], corners[at] = CORNERS, values[at]
        elif look.image is not None and looks.uv_map_of(s) in mesh.uv_maps:
            if look.image.name not in images:
                k = images[look.image.name] = len(images)
                for tile, tile_pixels_ in image_tiles(look.image, look.name).items():
                    arrays[f"image.{k}.{tile}"] = tile_pixels_
            sources[s], image_uvs[at] = images[look.image.name], mesh.uv_maps[looks.uv_map_of(s)][at]
    if len(arrays) > MAX_IMAGES:
        raise ValueError(f"The painted object's materials use {len(arrays)} images and UDIM tiles, over the "
                         f"{MAX_IMAGES} a paint sends: paint fewer faces, or give them fewer materials")
    total = sum(a.nbytes for a in arrays.values())
    if total > IMAGE_BUDGET:
        raise ValueError(f"The painted object's images are {total / 2**20:,.0f} MB as pixels, over the "
                         f"{IMAGE_BUDGET / 2**20:,.0f} MB a paint sends: scale them down for painting")
    arrays |= {"face_slots": looks.face_slots, "slot_colors": colors, "slot_sources": sources}
    if (sources >= 0).any():
        arrays["image_uvs"] = image_uvs.reshape(-1, 2)
    if (sources == CORNERS).any():
        arrays["corner_colors"] = corners.reshape(-1, 3)
    return arrays
