"""Build hook for the optional C extensions (everything else is in pyproject.toml).

- `gsformat.codecs._lattice_native`: the fast gsformat.lattice / lattice-rans decoder (zstd frames
  through python-zstd, the library the NumPy decoder uses).
- `gsformat.fitting._tiles`: the fitter's tile engine (forward + loss + backward per screen tile,
  threads over tiles).

Where no compiler is found a build is skipped with a warning and gsformat uses the NumPy twin (the
NumPy decoder: the same values; the NumPy window engine: the same fit, several times slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "gsformat.codecs._lattice_native",
        sources=["gsformat/codecs/_lattice_native.c", "gsformat/codecs/_rans.c"],
        depends=["gsformat/codecs/_rans.h"],
        extra_compile_args=["-O3", "-std=c11", "-Wall"],
        optional=True,
    ),
    Extension(
        "gsformat.fitting._tiles",
        sources=["gsformat/fitting/_tiles.c"],
        # no errno or FP traps: lets GCC vectorise sqrtf and the selects; a·b + c as one FMA
        # (-ffp-contract=fast; ISO C mode leaves it off): ~1.25× for the engine, NaN and inf as
        # before (no -ffast-math: the rounding trick in exp_nonpos needs exact float arithmetic)
        extra_compile_args=["-O3", "-std=c11", "-Wall", "-pthread", "-fno-math-errno",
                            "-fno-trapping-math", "-funroll-loops", "-ffp-contract=fast"],
        extra_link_args=["-pthread"],
        optional=True,
    ),
])
