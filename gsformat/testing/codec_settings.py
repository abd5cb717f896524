"""The lossy codec settings the rate–distortion study (`benchmarks/rd_bench.py`) measures and the
downstream study (`benchmarks/downstream_bench.py`) trains and evaluates on: the same steps, one
place."""
from __future__ import annotations

LATTICE = {  # name → steps (position, ln scale, shear, colour) of gsformat.lattice
    "l-fine": (2.0 ** -12, 0.03, 0.03, 0.015), "l-mid": (2.0 ** -11, 0.05, 0.05, 0.022),
    "l-lean": (2.0 ** -11, 0.06, 0.08, 0.03), "l-coarse": (2.0 ** -10, 0.08, 0.1, 0.045)}

RANS_ID = "gsformat.lattice-rans"


def lattice_pipeline(steps, codec_id: str = "gsformat.lattice"):
    """A one-stage codec pipeline (``gsformat.lattice`` or ``-rans``) at ``steps``."""
    config = {"id": codec_id, "position_step": steps[0], "scale_step": steps[1],
              "shear_step": steps[2], "colour_step": steps[3]}
    return [config | ({"level": 19} if codec_id == "gsformat.lattice" else {})]
