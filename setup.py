"""Build hook for the one optional C extension (everything else is in pyproject.toml).

`gsformat.codecs._lattice_native` is the fast gsformat.lattice / lattice-rans decoder (zstd frames
through python-zstd, the library the NumPy decoder uses). Where no compiler is found the build is
skipped with a warning and gsformat uses the NumPy decoder, which gives the same values.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "gsformat.codecs._lattice_native",
    sources=["gsformat/codecs/_lattice_native.c", "gsformat/codecs/_rans.c"],
    depends=["gsformat/codecs/_rans.h"],
    extra_compile_args=["-O3", "-std=c11", "-Wall"],
    optional=True,
)])
