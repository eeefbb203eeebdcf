"""Build settings that pyproject.toml cannot state without an experimental table.

``tierstream._native`` is the aggregation's per-event hot path in C (see
``tierstream/native.py``). It is optional: without a C compiler the install
still succeeds and the pure-Python twins are used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tierstream._native",
            sources=["tierstream/_native.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
