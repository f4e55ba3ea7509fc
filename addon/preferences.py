"""Add-on preferences: where the server is, how to trust it, how long to wait, how to start one locally."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bpy
from bpy.props import FloatProperty, StringProperty

from .addresses import DEFAULT_ADDRESS, parse_address
from .connection import Settings

PACKAGE = __package__.rpartition(".")[0]  # the extension's package: preferences are keyed by it


# called when a connection setting changes: the runtime subscribes its reconnect here when it starts, so these
# settings need not know the runtime
ON_CHANGE: list[Callable[[], None]] = []


def _restart_connection(_self: bpy.types.AddonPreferences, _context: bpy.types.Context) -> None:
    for listener in ON_CHANGE:
        listener()


class LatentForgePreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    server_address: StringProperty(
        name="Server", default=DEFAULT_ADDRESS, update=_restart_connection,
        description="The LatentForge server, as tcp://host:port (a local server listens on "
                    f"{DEFAULT_ADDRESS} by default)",
    )
    server_key_file: StringProperty(
        name="Server Key", subtype="FILE_PATH", update=_restart_connection,
        description="The server's public key file, server.key, from `latentforge keys` on the server: needed for "
                    "any server that is not on this computer",
    )
    client_key_file: StringProperty(
        name="Your Secret Key", subtype="FILE_PATH", update=_restart_connection,
        description="This computer's key file, NAME.key_secret, from `latentforge keys --client NAME` (its public "
                    "half is on the server's allow list)",
    )
    timeout_s: FloatProperty(
        name="Timeout", default=10.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE", update=_restart_connection,
        description="How long to wait for the server's answer before calling it unreachable",
    )
    preview_interval_s: FloatProperty(name="Preview Every", default=3.0, min=0.5, max=120.0,
                                      unit="TIME_ABSOLUTE", description="Shortest time between preview images")
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="The Python of the environment where LatentForge's server is installed (`pip install "
                    "latentforge`), e.g. .../venv/bin/python: the add-on starts `python -m backend serve`",
    )
    backend_args: StringProperty(name="Server Arguments",
                                 description="Extra `latentforge serve` arguments, e.g. --device cuda")
    results_dir: StringProperty(
        name="Results Folder", subtype="DIR_PATH",
        description="Where textures and meshes of results are saved (empty: the extension's own user folder)",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        col = layout.column(heading="Server")
        col.prop(self, "server_address")
        if problem := settings_problem(self):
            col.label(text=problem, icon="ERROR")
        col.prop(self, "timeout_s")
        col.prop(self, "preview_interval_s")
        col = layout.column(heading="Remote Server (CURVE)")
        col.prop(self, "server_key_file")
        col.prop(self, "client_key_file")
        col = layout.column(heading="Local Server")
        col.prop(self, "backend_python")
        col.prop(self, "backend_args")
        row = col.row()
        row.operator("latentforge.start_server", icon="PLAY")
        row.operator("latentforge.stop_server", icon="PAUSE")
        layout.prop(self, "results_dir")


def get(context: bpy.types.Context | None = None) -> LatentForgePreferences:
    return (context or bpy.context).preferences.addons[PACKAGE].preferences


def curve_keys(prefs: LatentForgePreferences) -> tuple[str, str] | None:
    """(server key file, client secret key file), None when neither is set; raises ValueError when only one
    is, or a file is missing."""
    files = tuple(bpy.path.abspath(f.strip()) if f.strip() else "" for f in (prefs.server_key_file,
                                                                            prefs.client_key_file))
    if not any(files):
        return None
    if not all(files):
        raise ValueError("CURVE needs both key files: the server's server.key and your NAME.key_secret")
    for path in files:
        if not Path(path).is_file():
            raise ValueError(f"key file not found: {path}")
    return files  # type: ignore[return-value]


def connection_settings(prefs: LatentForgePreferences) -> Settings:
    """What the connection thread needs; raises ValueError with the reason it cannot connect."""
    address = parse_address(prefs.server_address)
    keys = curve_keys(prefs)
    if not address.is_loopback:
        if not bpy.app.online_access:
            raise ValueError(f"{address} is on another computer and Blender is set to work offline: allow "
                             "online access in Preferences › System › Network, or use a local server")
        if keys is None:
            raise ValueError(f"{address} is on another computer: set its key files in the add-on preferences "
                             "(a remote server only talks encrypted, to clients it allows)")
    return Settings(str(address), prefs.timeout_s, keys)


def settings_problem(prefs: LatentForgePreferences) -> str | None:
    try:
        connection_settings(prefs)
    except ValueError as exc:
        return str(exc)
    return None


def results_dir(prefs: LatentForgePreferences) -> Path:
    """The folder results are saved in (created on demand)."""
    if prefs.results_dir:
        path = Path(bpy.path.abspath(prefs.results_dir))
    else:
        path = Path(bpy.utils.extension_path_user(PACKAGE, path="results", create=True))
    path.mkdir(parents=True, exist_ok=True)
    return path
