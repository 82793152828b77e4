"""Builds the compiled window pooler; everything else is declared in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
``spp.WindowPooler`` pools through torch (slower on the CPU, same numbers).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sppdet.detector.spp._spp_kernel",
            sources=["detector/spp/_spp_kernel.c"],
            depends=["detector/spp/_spp_kernel_body.h"],
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
