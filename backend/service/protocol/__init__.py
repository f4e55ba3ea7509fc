"""Protocol v1 of the LatentForge service: multipart ZeroMQ messages, encoded and strictly validated.

Frame 0 is a UTF-8 JSON header `{"v": 1, "type": ..., "id"?: ..., <fields>, "arrays": [...], "blobs": [...]}`;
one raw little-endian frame follows per declared array, then one per declared blob. PROTOCOL.md is the
human-readable version of this package: `base` (the vocabulary and limits), `fields` (header rules),
`arrays` (array and blob rules) and `codec` (frames). Imports only the standard library, numpy and pyzmq:
the Blender add-on ships this package as it is.
"""

from __future__ import annotations

from ...catalog import MAX_FACES, MAX_PROMPT_CHARS, MAX_SEED, MAX_VERTICES  # noqa: F401 - the limits, as the wire states them
from .arrays import (  # noqa: F401
    ARRAYS,
    BLOBS,
    CHECKPOINT_ARRAYS,
    CHECKPOINT_PREFIX,
    IMAGE_ARRAY,
    IMAGE_ARRAYS,
    IMAGE_BLOB,
    IMAGE_VIEW_FIELDS,
    LOD_ITEM,
    MAX_TILE_BYTES,
    TILE_BLOB,
    TILE_BLOBS,
    ArrayRule,
    check_appearance,
    check_arrays,
    check_image_blob,
    check_mesh_arrays,
    check_result_arrays,
    image_index,
    lod_item,
    png_size,
)
from .base import (  # noqa: F401
    BROKER_TO_WORKER,
    CLIENT_REQUESTS,
    DTYPES,
    ERROR_CODES,
    FINAL_STATES,
    FIRST_TILE,
    JOB_ID,
    JOB_STATES,
    LAST_TILE,
    LIVENESS,
    MAX_GROUP,
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_PREVIEW_BYTES,
    MAX_SLOTS,
    MESSAGE_TYPES,
    REQUEST_ID,
    REQUEST_LIMITS,
    SERVER_REPLIES,
    TASK_NAMES,
    TRUSTED_LIMITS,
    VERSION,
    WORKER_TO_BROKER,
    Frames,
    Limits,
    Message,
    ProtocolError,
    a_or_an,
)
from .codec import (  # noqa: F401
    decode,
    encode,
    error_fields,
    invalid_text,
    printable,
    valid_text,
)
from .fields import (  # noqa: F401
    SCHEMAS,
    F,
    check_fields,
)
