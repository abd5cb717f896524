"""The core: what a splat and a record are, without I/O (layers 0–3, tests/test_layers.py).

``constants`` (format constants, one place), ``errors``, ``splatset`` (`SplatSet`),
``render_math`` (the renderer's maths, shared by every renderer), ``zstd_frame`` and ``record``
(splat records; it sits above `gsformat.codecs`, so this package imports none of its modules
eagerly: a codec importing ``core.constants`` loads nothing else).
"""
