"""What `fastio run` leaves behind: shared-memory outputs saved as .npy files."""

import subprocess
import sys
import textwrap

import numpy as np

from test_operator import fastio_command

SAVED = """
api-version: 0.5.0
name: saved
operators:
- name: make
  command: [PYTHON, make.py]
  output:
  - {name: grid, type: array, element-type: float64, shape: [3, 4]}
  - {name: found, type: array, element-type: int32, shape: [-1, 2]}
  - {name: note, type: string}
  - {name: half, type: float16}
"""

MAKE = """
import numpy as np
import clara

def execute(driver, payload):
    outs = payload.fastio_output_entries
    outs["grid"].as_numpy()[:] = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    found = outs["found"]
    found.update_shape([0], [3])
    found.as_numpy()[:] = [[1, -2], [3, -4], [5, -6]]
    note = outs["note"]
    note.update_shape([0], [5])
    note.as_numpy()[:] = np.frombuffer(b"hello", dtype=np.uint8)
    outs["half"].as_numpy()[:] = np.float16(0.333)

d = clara.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""


def test_saved_arrays_load_with_numpy_and_equal_what_was_written(tmp_path):
    (tmp_path / "make.py").write_text(textwrap.dedent(MAKE))
    (tmp_path / "pipeline.yaml").write_text(SAVED.replace("PYTHON", sys.executable))
    saved = tmp_path / "saved"
    result = subprocess.run(
        [fastio_command(), "run", "-q", "--output", str(tmp_path / "out"),
         "--save", str(saved), str(tmp_path / "pipeline.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    grid = np.load(saved / "make" / "grid.npy")
    assert grid.dtype == np.float64
    assert (grid == np.arange(12, dtype=np.float64).reshape(3, 4) / 7).all()
    found = np.load(saved / "make" / "found.npy")
    assert found.dtype == np.int32 and found.tolist() == [[1, -2], [3, -4], [5, -6]]
    assert np.load(saved / "make" / "note.npy").tobytes() == b"hello"
    half = np.load(saved / "make" / "half.npy")
    assert half.dtype == np.float16 and half.tolist() == [np.float16(0.333)]
    for name in ("grid", "found", "note", "half"):
        assert str(saved / "make" / f"{name}.npy") in result.stdout, result.stdout
