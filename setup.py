"""What pyproject.toml cannot say through a stable key: the optional compiled steps, the
deleter's (ocrd/ops/sweep.c; ocrd/ops/sweep.py says what it does and does not) and the scan's
(ocrd/fs/records.c; ocrd/fs/records.py).

``optional``: where there is no C compiler or no Python headers, the install goes on without
them, and ocrd deletes and scans through its Python paths, the references.
``-ffp-contract=off``: times are computed and compared as the doubles Python computes
(sec + nsec * 1e-9), never through a fused multiply-add.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-ffp-contract=off", "-Wall", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension("ocrd.ops._sweep", ["ocrd/ops/sweep.c"], optional=True, extra_compile_args=FLAGS),
        Extension(
            "ocrd.fs._records", ["ocrd/fs/records.c"], optional=True, extra_compile_args=FLAGS
        ),
    ]
)
