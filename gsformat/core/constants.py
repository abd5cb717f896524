"""Format constants for gsformat v1 — the one place every number of the format lives.

`spec/SPEC.md` is normative; this module mirrors it. A change here is a format change: it needs a
version bump (see SPEC.md § Versioning) and new golden vectors, never rewritten ones.
"""
from __future__ import annotations

# ---- versions -------------------------------------------------------------------------------
FORMAT_MAJOR = 1
FORMAT_MINOR = 5  # 1.0: records, datasets, gsformat.planar/quantize; 1.1: gsformat.entropy;
                  # 1.2: gsformat.lattice; 1.3: gsformat.lattice-rans; 1.4: reader rules;
                  # 1.5: the second implementer's guesses closed
FORMAT_VERSION = (FORMAT_MAJOR, FORMAT_MINOR)

# ---- splat parameters -----------------------------------------------------------------------
PARAMS_PER_SPLAT = 8
PARAM_NAMES = ("mu_x", "mu_y", "l11", "l21", "l22", "r", "g", "b")
LAYOUT_ID = "gs2d.mu2.chol3.rgb3"  # the only layout of major version 1
STORAGE_DTYPE = "<f2"  # IEEE 754 binary16, little-endian
BYTES_PER_SPLAT = PARAMS_PER_SPLAT * 2  # 16
# Column slices into the [N, 8] parameter array.
MEAN_COLS = slice(0, 2)
CHOL_COLS = slice(2, 5)
COLOUR_COLS = slice(5, 8)

# ---- record (msgpack map) keys --------------------------------------------------------------
KEY_VERSION = "version"    # [major, minor]                  required
KEY_N_SPLATS = "n_splats"  # uint                            required
KEY_HEIGHT = "height"      # uint, canvas height in pixels    required
KEY_WIDTH = "width"        # uint, canvas width in pixels     required
KEY_LAYOUT = "layout"      # str, LAYOUT_ID                   required
KEY_CODECS = "codecs"      # list of numcodecs configs        required (empty = raw FP16)
KEY_PAYLOAD = "payload"    # bin                              required
KEY_FIT = "fit"            # map: psnr, iters, ...            optional, may be ignored
REQUIRED_KEYS = (KEY_VERSION, KEY_N_SPLATS, KEY_HEIGHT, KEY_WIDTH, KEY_LAYOUT, KEY_CODECS,
                 KEY_PAYLOAD)
REQUIRED_KEY_SET = frozenset(REQUIRED_KEYS)

# ---- limits (checked before anything is allocated) ------------------------------------------
MAX_SPLATS = 1 << 20               # 1,048,576 splats per record
MAX_CANVAS_SIDE = 1 << 16          # 65,536 pixels per side
MAX_RECORD_BYTES = 64 << 20        # 64 MiB per encoded record
MAX_DECODED_BYTES = MAX_SPLATS * BYTES_PER_SPLAT * 2  # any intermediate stage of a codec pipeline
MAX_CODECS = 8                     # codec pipeline length
MAX_FIT_KEYS = 64                  # entries in the optional fit map
MAX_NESTING = 64                   # 1.5: containers deep in a record (its map is depth 1)

# ---- dataset --------------------------------------------------------------------------------
MANIFEST_NAME = "gsformat.json"
MANIFEST_FORMAT = "gsformat"
INDEX_NAME = "index.json"
# MDS encodings of every column a gsformat dataset may have.
COLUMN_ENCODINGS = {
    "key": "str",
    "splats": "bytes",
    "caption": "str",
    "label": "int",
    "source": "str",
    "image": "jpeg",
    "meta": "str",    # 1.4: a source's sidecar metadata as JSON text (img2dataset's .json)
}
REQUIRED_COLUMNS = ("key", "splats")
DEFAULT_COMPRESSION = "zstd"
DEFAULT_HASHES = ("xxh64",)
MAX_JSON_BYTES = 64 << 20  # index.json, gsformat.json, part.json
DEFAULT_SHARD_SIZE_LIMIT = 1 << 26  # 64 MiB of uncompressed samples per shard
