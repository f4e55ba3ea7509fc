"""A Cycles strip of levels of detail, shaded with their textures and normal maps, each with a wireframe of
its own faces: the triangle levels from a GLB on the top row, the quad levels from an OBJ below.

    python benchmarks/render_lods.py triangles.glb quads.obj strip.png [--lods 3] [--size 320] [--samples 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from render_glb import frame, lit_scene  # noqa: E402 - the same scene and camera as scripts/render_glb.py


def add_wireframe(obj, thickness: float):  # noqa: ANN001, ANN201
    """A copy of `obj` as thin dark struts along its own edges (quads stay quads)."""
    import bpy

    wire = obj.copy()
    bpy.context.scene.collection.objects.link(wire)
    modifier = wire.modifiers.new("wire", "WIREFRAME")
    modifier.thickness = thickness
    modifier.use_replace = True
    modifier.use_even_offset = False  # even offset spikes at sharp corners
    dark = bpy.data.materials.new("wire")
    dark.diffuse_color = (0.02, 0.02, 0.02, 1.0)
    if dark.node_tree is None:
        dark.use_nodes = True
    bsdf = next(n for n in dark.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (0.02, 0.02, 0.02, 1.0)
    wire.data = wire.data.copy()
    wire.data.materials.clear()
    wire.data.materials.append(dark)
    return wire


def wire_normal_maps(obj) -> None:  # noqa: ANN001
    """An OBJ's `map_Bump` image as a tangent-space normal map (Blender's OBJ importer makes it a bump map)."""
    for material in obj.data.materials:
        nodes, links = material.node_tree.nodes, material.node_tree.links
        bump = next((n for n in nodes if n.type == "BUMP"), None)
        bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
        if bump is None:
            continue
        image = bump.inputs["Height"].links[0].from_node
        image.image.colorspace_settings.name = "Non-Color"
        normal = nodes.new("ShaderNodeNormalMap")
        links.new(image.outputs["Color"], normal.inputs["Color"])
        links.new(normal.outputs["Normal"], bsdf.inputs["Normal"])
        nodes.remove(bump)


def render_level(path: Path, k: int, out: Path, size: int, samples: int) -> None:
    import bpy

    scene = lit_scene(size, samples, fov_deg=35)
    if path.suffix == ".glb":
        bpy.ops.import_scene.gltf(filepath=str(path), merge_vertices=True)  # UV seams split the GLB's vertices
    else:
        bpy.ops.wm.obj_import(filepath=str(path))
    meshes = [o for o in scene.objects if o.type == "MESH"]
    chosen = next(o for o in meshes if o.name.endswith(f"_LOD{k}"))
    for obj in meshes:
        if obj is not chosen:
            bpy.data.objects.remove(obj)
    if path.suffix == ".obj":
        wire_normal_maps(chosen)
    extent = max(chosen.dimensions)
    add_wireframe(chosen, extent * 0.0025)
    frame(scene, [chosen], margin=1.05)
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("obj", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--lods", type=int, default=3)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    from PIL import Image, ImageDraw

    tiles = []
    for row, source in enumerate((args.glb, args.obj)):
        for k in range(args.lods):
            tile = args.out.with_name(f".{args.out.stem}-{row}-{k}.png")
            render_level(source, k, tile, args.size, args.samples)
            tiles.append((row, k, tile))
    strip = Image.new("RGB", (args.size * args.lods, args.size * 2))
    for row, k, tile in tiles:
        image = Image.open(tile).convert("RGB")
        ImageDraw.Draw(image).text((8, 6), f"{'triangles' if row == 0 else 'quads'} LOD{k}", fill=(255, 255, 255))
        strip.paste(image, (k * args.size, row * args.size))
        tile.unlink()
    strip.save(args.out)


if __name__ == "__main__":
    main()
