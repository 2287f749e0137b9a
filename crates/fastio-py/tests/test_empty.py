"""Arrays with a zero dimension are valid (numpy's semantics), in one process, across a
context server with a real child process, and as FastIO entries between two operator
processes of a job run by `fastio run`; the dynamic markers of a definition keep their
meaning."""

import subprocess
import sys
import textwrap

import numpy as np

import fastio
from test_operator import run_pipeline


def test_publish_array_of_an_empty_array(ctx):
    ctx.publish_array(np.zeros((0, 3)), "none")
    got = ctx.get("none", fastio.IOAccess.ReadOnly)
    assert got.size == 0 and got.shape == (0, 3)
    view = got.as_numpy()
    assert view.shape == (0, 3) and view.dtype == np.float64 and view.size == 0
    assert got.get_bytes() == b""
    a = ctx.create(0)
    a.set_type_and_dimensions(np.int32, [5, 0])
    assert a.as_numpy().shape == (5, 0)
    a.publish("five-by-none")
    assert ctx.get("five-by-none").shape == (5, 0)


CHILD = """
import numpy as np, fastio
ctx = fastio.FastIOContext.from_env()
got = ctx.get("found", fastio.IOAccess.ReadOnly).as_numpy()
assert got.shape == (0, 3), got.shape
ctx.publish_array(np.empty((got.shape[0], 2), dtype=np.int16), "answer")
"""


def test_an_empty_array_crosses_to_a_child_process_and_back():
    with fastio.serve() as server:
        ctx = server.context()
        ctx.publish_array(np.zeros((0, 3), dtype=np.float32), "found")
        child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)],
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        answer = ctx.get("answer").as_numpy()
        assert answer.shape == (0, 2) and answer.dtype == np.int16


PIPELINE = """
api-version: 0.5.0
name: empty
operators:
- name: finder
  command: [PYTHON, DIR/finder.py]
  output:
  - {name: lesions, type: array, element-type: float32, shape: [-1, 3]}
  - {name: labels, type: array, element-type: int32, shape: [0]}
  - {name: note, type: string}
- name: reporter
  command: [PYTHON, DIR/reporter.py]
  input:
  - {name: lesions, from: finder, type: array, element-type: float32, shape: [-1, 3]}
  - {name: labels, from: finder, type: array, element-type: int32, shape: [0]}
  - {name: note, from: finder, type: string}
  output:
  - {name: report, type: stream, path: /report}
"""

FINDER = """
import fastio

def execute(driver, payload):
    outs = payload.fastio_output_entries
    for name in ("lesions", "labels", "note"):
        e = outs[name]
        # The definition's markers (-1 and 0) still mean "dynamic": nothing pre-allocated.
        assert e.is_dynamic and not e.is_preallocated and not e.is_allocated, name
    assert outs["lesions"].update_shape([0], [0]) == (0, 3)   # no lesion found
    assert outs["labels"].update_shape([0], [0]) == (0,)
    assert outs["note"].update_shape([0], [0]) == (0,)        # an empty string
    for name in ("lesions", "labels", "note"):
        e = outs[name]
        assert e.is_allocated and e.size_in_bytes == 0, name
        assert e.as_numpy().size == 0

d = fastio.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""

REPORTER = """
import os
import fastio

def execute(driver, payload):
    ins = payload.fastio_input_entries
    lesions = ins["lesions"].get_numpy()
    labels = ins["labels"].get_numpy()
    note = ins["note"].get_bytes()
    with open(os.path.join(payload.output_entries["report"].path, "report.txt"), "w") as f:
        f.write(f"{lesions.shape} {lesions.dtype} {labels.shape} {note!r}")

d = fastio.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""


def test_empty_entries_cross_between_two_operator_processes(tmp_path):
    run = run_pipeline(tmp_path, PIPELINE, {"finder": FINDER, "reporter": REPORTER})
    assert run.returncode == 0, run.stdout + run.stderr
    # Wherever the job's output folder is (per job, or not), it holds one report.txt.
    (report,) = (tmp_path / "out").rglob("reporter/report/report.txt")
    report = report.read_text()
    assert report == "(0, 3) float32 (0,) b''"
