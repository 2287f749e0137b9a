"""What `fastio run` leaves behind: shared-memory outputs saved as .npy files."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
import pytest
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


LISTED = """
api-version: 0.5.0
name: listed-py
operators:
- name: make
  command: [PYTHON, make.py]
  output:
  - {name: grid, type: array, element-type: float64, shape: [3, 4]}
- name: wait
  command: [PYTHON, wait.py]
  input:
  - {name: grid, from: make, type: array, element-type: float64, shape: [3, 4]}
"""

MAKE_GRID = """
import clara

def execute(driver, payload):
    payload.fastio_output_entries["grid"].as_numpy()[:] = 1.5

d = clara.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""

WAIT = """
import os, time
import clara

def execute(driver, payload):
    grid = payload.fastio_input_entries["grid"].get_numpy()
    open("waiting", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.02)
    del grid

d = clara.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""


def test_jobs_and_inspect_list_a_running_job_like_fastio_ls(tmp_path):
    import time

    import fastio

    (tmp_path / "make.py").write_text(textwrap.dedent(MAKE_GRID))
    (tmp_path / "wait.py").write_text(textwrap.dedent(WAIT))
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(LISTED.replace("PYTHON", sys.executable))
    run = subprocess.Popen(
        [fastio_command(), "run", "-q", "--output", str(tmp_path / "out"), str(definition)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "waiting").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        mine = [j for j in fastio.jobs() if j["definition"] == str(definition)]
        assert len(mine) == 1, fastio.jobs()
        seen = fastio.inspect(mine[0]["job_id"][:12])
        assert seen["job"]["pipeline"] == "listed-py"
        states = {o["name"]: o["state"] for o in seen["listing"]["job"]["operators"]}
        assert states["wait"] == "executing", states
        (grid,) = seen["listing"]["entries"]
        assert grid["name"] == "grid" and grid["producer"] == "make"
        assert grid["dims"] == [3, 4] and grid["bytes"] == 96
        assert [h["who"] for h in grid["holders"]] == ["wait"]
    finally:
        (tmp_path / "go").touch()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, out + err
    with pytest.raises(fastio.Error, match="no running job matches"):
        fastio.inspect(mine[0]["job_id"])
