"""The C/C++ SDK inside the pip-installed package: `python -m attnkit --cmake-dir / --include-dir / --libs`
point at the installed headers, libraries and CMake/pkg-config files, and a C++ and a C99 program build
and run against them with no second build of attnkit (find_package with attnkit_DIR, and plain compiler
flags). The README's C example compiles and runs as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import attnkit

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / "tests" / "cpp" / "consumer"
README = ROOT / "README.md"


def sdk(*flags: str) -> str:
    r = subprocess.run([sys.executable, "-m", "attnkit", *flags], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_sdk_locations():
    cmake_dir = Path(sdk("--cmake-dir"))
    assert (cmake_dir / "attnkitConfig.cmake").is_file()
    assert (Path(sdk("--include-dir")) / "attnkit" / "c_api.h").is_file()
    assert (Path(sdk("--include-dir")) / "attnkit" / "version.h").is_file()
    lib_dir = Path(sdk("--lib-dir"))
    assert (lib_dir / "libattnkit.a").is_file() and (lib_dir / "libattnkit.so").exists()
    assert (Path(sdk("--pkgconfig-dir")) / "attnkit.pc").is_file()
    assert f"-L{lib_dir}" in sdk("--libs").split()
    assert sdk("--cflags", "--libs").startswith("-I")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_consumer_against_pip_package(tmp_path):
    build = tmp_path / "build"
    run(["cmake", "-S", str(CONSUMER), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-Dattnkit_DIR={sdk('--cmake-dir')}"])
    run(["cmake", "--build", str(build), "-j", "2"])
    for prog in ("consumer", "consumer_c", "consumer_static", "consumer_c_static"):
        out = run([str(build / prog)])
        assert "attnkit" in out


@pytest.mark.skipif(shutil.which("pkg-config") is None or shutil.which("cmake") is None,
                    reason="needs pkg-config and cmake")
def test_pkgconfig_consumer_against_pip_package(tmp_path):
    env = dict(os.environ, PKG_CONFIG_PATH=sdk("--pkgconfig-dir"))
    assert run(["pkg-config", "--modversion", "attnkit"], env=env).strip() == attnkit.__version__
    build = tmp_path / "build"
    run(["cmake", "-S", str(CONSUMER), "-B", str(build), "-DATTNKIT_USE_PKGCONFIG=ON"], env=env)
    run(["cmake", "--build", str(build), "-j", "2"])
    assert "0 failure(s)" in run([str(build / "consumer_c")])


def readme_c_example() -> str:
    blocks = re.findall(r"```c\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "expected one C example in the README"
    return blocks[0]


@pytest.mark.skipif(shutil.which("cc") is None or not README.exists(), reason="needs a C compiler and the README")
def test_readme_c_example_compiles_and_runs(tmp_path):
    src = tmp_path / "example.c"
    src.write_text(readme_c_example())
    exe = tmp_path / "example"
    run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", str(src), "-o", str(exe),
         *shlex.split(sdk("--cflags")), *shlex.split(sdk("--libs")), "-lm"])
    out = run([str(exe)])
    assert "out[0] =" in out
