"""Build script: the Cython extensions that form RedWeb's per-packet hot path.

Everything else is declared in pyproject.toml; setup.py exists because setuptools
needs a place to list compiled extensions.
"""
from setuptools import Extension, setup
from Cython.Build import cythonize

EXTENSIONS = [
    Extension("dpi._core", ["dpi/_core.pyx"], extra_compile_args=["-O3"]),
    Extension("dpi._extract", ["dpi/_extract.pyx"], extra_compile_args=["-O3"]),
    # The NFQUEUE callback: cimports netfilterqueue's Packet (its .pxd ships with the package, and its C headers
    # with libnetfilter-queue-dev), so it builds where NetfilterQueue is installed.
    Extension("dpi._verdict", ["dpi/_verdict.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
