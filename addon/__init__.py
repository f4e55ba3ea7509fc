"""LatentForge for Blender: a prompt plus a blockout (or a mesh to paint) in, a textured asset out.

The work runs in the LatentForge service; this add-on sends geometry, streams progress and brings
results into the scene. `connection.py` owns the network in a thread and never touches bpy;
`runtime.py` is the only path from it into bpy.data.
"""

from __future__ import annotations

import bpy

from . import operators, panel, preferences, properties, reference, runtime

# Registration order matters: property groups before what points to them, panels last.
CLASSES = (
    properties.LatentForgeSettings,
    preferences.LatentForgePreferences,
    *operators.CLASSES,
    *panel.CLASSES,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.latentforge = bpy.props.PointerProperty(type=properties.LatentForgeSettings)
    reference.register()
    runtime.start()


def unregister() -> None:
    runtime.stop()
    reference.unregister()
    del bpy.types.Scene.latentforge
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
