"""Helpers for the tests, the benchmarks and the examples, shipped with the package (like
``numpy.testing``); nothing in the library imports them.

- `gsformat.testing.photos` — real photographs bundled inside scikit-image and scikit-learn (no
  download), centre-cropped and resized; the fitter's tuning and held-out report sets;
- `gsformat.testing.digits` — scikit-learn's handwritten digits as image folders, and the steps
  of the two-stage training recipe (`examples/digits/run.py`, `benchmarks/downstream_bench.py`);
- `gsformat.testing.codec_settings` — the lattice steps the rate–distortion and downstream
  studies share;
- `gsformat.testing.fuzz` — the record mutator, SPEC.md § 7's decoding budget and the fuzzing
  run (`benchmarks/fuzz_bench.py`, `tests/test_hostile_records.py`).

Third-party packages beyond the plain install (scikit-image, scikit-learn, Pillow, torch) are
imported inside the functions that need them: importing any of these modules needs only the
plain install.
"""
