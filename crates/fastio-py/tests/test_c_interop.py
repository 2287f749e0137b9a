"""Element types between Python and C: a [2,3] array of each of the eleven element types goes
from Python to a C program (crates/fastio-ffi/tests/c/element_types.c, compiled here
with the system C compiler against the C API's header and library) and from C back to
Python, bit for bit, with the right type, dimensions and byte size."""

import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import fastio

ROOT = pathlib.Path(__file__).resolve().parents[3]
TYPES = ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
         "float16", "float32", "float64"]


def pattern(code, size):
    """Byte i of the array of element type `code` (element_types.c computes the same)."""
    return bytes(((i * 31 + code * 7 + 3) & 0xFF) for i in range(size))


@pytest.fixture(scope="module")
def element_types_program(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (the README's test command expects one)"
    cargo = os.environ.get("CARGO", "cargo")
    subprocess.run([cargo, "build", "--quiet", "-p", "fastio-ffi", "--lib"], cwd=ROOT,
                   check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    exe = tmp_path_factory.mktemp("c") / "element_types"
    tests_c = ROOT / "crates/fastio-ffi/tests/c"
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", "-I", str(ROOT / "crates/fastio-ffi/include"),
         "-I", str(tests_c), str(tests_c / "element_types.c"), "-L", str(target),
         "-lfastio", f"-Wl,-rpath,{target}", "-o", str(exe)],
        check=True,
    )
    return exe


def test_every_element_type_crosses_between_python_and_c_bit_exactly(server,
                                                                     element_types_program):
    ctx = fastio.FastIOContext.connect(server.address)
    for code, name in enumerate(TYPES):
        data = pattern(code, 6 * np.dtype(name).itemsize)
        ctx.publish_array(np.frombuffer(data, dtype=name).reshape(2, 3), "r_" + name)
    env = dict(os.environ, FASTIO_CONTEXT=server.address)
    env.pop("NVIDIA_CLARA_NOSYNCLOCK", None)
    for role in ["produce", "consume"]:  # consume checks Python's arrays and its own
        done = subprocess.run([str(element_types_program), role], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{role}: {done.stdout}{done.stderr}"
    for code, name in enumerate(TYPES):
        back = ctx.get("c_" + name)
        assert back.element_type == np.dtype(name)
        assert back.shape == (2, 3)
        assert back.size == 6 * np.dtype(name).itemsize
        assert back.get_bytes() == pattern(code, back.size)
        assert back.get_numpy().dtype == np.dtype(name)
