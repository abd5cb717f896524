"""Build hook for the one optional C extension (everything else is in pyproject.toml).

`gsformat.codecs._lattice_native` is the fast gsformat.lattice decoder. It links the system's
libzstd (libzstd.so.1; no header needed). Where no compiler or libzstd is found the build is
skipped with a warning and gsformat uses the NumPy decoder, which gives the same values.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "gsformat.codecs._lattice_native",
    sources=["gsformat/codecs/_lattice_native.c", "gsformat/codecs/_rans.c"],
    depends=["gsformat/codecs/_rans.h"],
    extra_compile_args=["-O3", "-std=c11", "-Wall"],
    extra_link_args=["-l:libzstd.so.1"],
    optional=True,
)])
