"""Record fuzzing at scale: mutated records of every codec, each decoded within a budget, the C
decoders against the NumPy ones.

Seeds: the golden records (`spec/vectors/records/`, every codec and pipeline), the same splats
tiled to 1,600 per record in every codec, and crafted 2²⁰-splat records a few hundred bytes long.
Each record is mutated (bit flips, byte overwrites, truncation, insertion, payload words,
msgpack-level values) and decoded in a worker process: with the C decoders (timed, then again
under tracemalloc for the peak), then with the NumPy decoders; the two must give the same bits
or both raise `FormatError`. Counted: crashes (a worker that dies), hangs (a batch past its
deadline), exceptions that are not `FormatError`, disagreements, decodes over 64 MiB or 1 s and
over SPEC.md § 7's budget (3·16·N + 2·record + 8 MiB). The baseline, measured in the same run:
each seed's own decode time and peak.

    python benchmarks/fuzz_bench.py --records 100000 > benchmarks/results/fuzz_bench.json
    python benchmarks/fuzz_bench.py --records 2000    (about a minute)
"""
from __future__ import annotations

import argparse
import json
import sys

from gsformat.testing.fuzz import run


def main(records: int = 100_000, workers: int = 2, huge_share: float = 0.02) -> dict:
    """The fuzzing run (`gsformat.testing.fuzz.run`) and the command that reproduces it."""
    totals = run(records, workers, huge_share)
    totals["command"] = "python benchmarks/fuzz_bench.py --records " + str(records)
    return totals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = main(args.records, args.workers)
    json.dump(result, sys.stdout, indent=2)
    print()
