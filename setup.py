"""The package build: everything is in pyproject.toml except the optional bf16 operator library.

``csrc/bf16_ops.cpp`` is compiled into ``kandinsky_cli/_bf16_ops*.so``, a plain shared library loaded by
MindSpore's custom-operator mechanism (not a Python extension module). It needs only a C++17 compiler: oneDNN
is taken from MindSpore's own wheel at run time. Where it cannot be built the install still succeeds and
``--dtype bfloat16`` says why it is unavailable.
"""
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildOptional(build_ext):
    """Build the operator library as a plain shared object; a failure is reported, not fatal."""

    def get_export_symbols(self, ext):
        return []          # no PyInit_ function: this is not a Python module

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # a missing compiler must not break the install of the float32 tool
            print(f"warning: the bf16 operators were not built ({exc}); --dtype bfloat16 will be unavailable")


extensions = []
if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
    extensions.append(Extension(
        "kandinsky_cli._bf16_ops", sources=["csrc/bf16_ops.cpp"], language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden", "-pthread"],
        extra_link_args=["-pthread"], optional=True))

setup(ext_modules=extensions, cmdclass={"build_ext": BuildOptional})
