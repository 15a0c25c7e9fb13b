"""Build only the compiled core; all metadata lives in pyproject.toml.

There is deliberately no pure-Python fallback: if the extension cannot be
built, installation fails.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "engine._core",
        ["engine/_core.pyx"],
        extra_compile_args=["-O3"],
        define_macros=[("_GNU_SOURCE", "1")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "infer_types": True,
        },
    )
)
