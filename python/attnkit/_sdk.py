"""Where the wheel keeps attnkit's C/C++ SDK: headers, the static and shared libraries, the CMake package
config and the pkg-config file (``pip install attnkit`` installs them under ``site-packages/attnkit``), so
C and C++ programs can link the installed package without building attnkit a second time::

    cmake -S app -B build -Dattnkit_DIR="$(python -m attnkit --cmake-dir)"
    cc -std=c99 app.c $(python -m attnkit --cflags --libs)
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def _existing(path: Path, what: str) -> str:
    if not path.exists():
        raise FileNotFoundError(f"attnkit's {what} is not in this installation ({path} is missing): "
                                "install attnkit with pip (not as an editable install) to get the C/C++ SDK")
    return str(path)


def include_dir() -> str:
    """Directory to add to the include path (holds ``attnkit/attnkit.h`` and ``attnkit/c_api.h``)."""
    return _existing(_ROOT / "include", "include directory")


def lib_dir() -> str:
    """Directory holding ``libattnkit.a`` and ``libattnkit.so``."""
    return _existing(_ROOT / "lib", "library directory")


def cmake_dir() -> str:
    """Directory holding ``attnkitConfig.cmake``: pass it as ``-Dattnkit_DIR=...`` to CMake."""
    return _existing(_ROOT / "lib" / "cmake" / "attnkit", "CMake package directory")


def pkgconfig_dir() -> str:
    """Directory holding ``attnkit.pc``: add it to ``PKG_CONFIG_PATH``."""
    return _existing(_ROOT / "lib" / "pkgconfig", "pkg-config directory")


def cflags() -> str:
    """Compiler flags: ``-I<include dir>``."""
    return f"-I{include_dir()}"


def libs() -> str:
    """Linker flags for the shared library, with an rpath so the program finds it at run time."""
    d = lib_dir()
    return f"-L{d} -Wl,-rpath,{d} -lattnkit"
