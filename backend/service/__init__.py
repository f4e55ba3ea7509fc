"""The LatentForge job service: a ZeroMQ server, its workers and the one client the CLI and Blender share.

`protocol` and `client` import only the standard library, numpy and pyzmq (the Blender add-on ships
them as they are), so this package's import must stay as light: import the server modules directly.
"""
