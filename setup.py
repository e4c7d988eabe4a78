"""What pyproject.toml cannot say through a stable key: the deleter's optional compiled step,
ocrd/ops/sweep.c (ocrd/ops/sweep.py says what it does and does not).

``optional``: where there is no C compiler or no Python headers, the install goes on without
it, and ocrd deletes through its Python path, the reference. ``-ffp-contract=off``: mtimes are
compared as the doubles Python computes (sec + nsec * 1e-9), never through a fused
multiply-add.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ocrd.ops._sweep",
            ["ocrd/ops/sweep.c"],
            optional=True,
            extra_compile_args=[
                "-O2",
                "-ffp-contract=off",
                "-Wall",
                "-Werror=implicit-function-declaration",
            ],
        )
    ]
)
