"""Clara operators in Python under `fastio run` (Clara's operator
life-cycle, path variables and FastIO entries): Driver, Payload, FastIOEntry, and the clara module."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def fastio_command():
    """The `fastio` program, built by cargo (debug or release)."""
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "fastio"
        if path.is_file():
            return str(path)
    subprocess.run(["cargo", "build", "-q", "-p", "fastio", "--bins"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "fastio")


def run_pipeline(tmp_path, yaml, operators, env=None):
    """Writes the operator scripts and the definition into tmp_path and runs the job."""
    for name, source in operators.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(yaml).replace("PYTHON", sys.executable).replace("DIR", str(tmp_path))
    )
    return subprocess.run(
        [fastio_command(), "run", "--output", str(tmp_path / "out"), str(tmp_path / "pipeline.yaml")],
        cwd=tmp_path,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


TYPED = """
api-version: 0.5.0
name: typed
operators:
- name: producer
  command: [PYTHON, DIR/producer.py]
  output:
  - {name: grid, type: array, element-type: float32, shape: [3, 224, 224]}
  - {name: dyn, type: array, element-type: float32, shape: [3, -1, 224, -1]}
  - {name: dyn0, type: array, element-type: int16, shape: [3, 0, 224, 0]}
  - {name: uid, type: string}
  - {name: scalar, type: f32}
  - {name: report, type: stream, path: /report}
- name: consumer
  command: [PYTHON, DIR/consumer.py]
  input:
  - {name: grid, from: producer, type: array, element-type: float32, shape: [3, 224, 224]}
  - {name: dyn, from: producer, type: array, element-type: float32, shape: [3, -1, 224, -1]}
  - {name: dyn0, from: producer, type: array, element-type: int16, shape: [3, 0, 224, 0]}
  - {name: uid, from: producer, type: string}
  - {name: scalar, from: producer, type: float32}
  - {name: report, from: producer, type: stream, path: /report}
  output:
  - {name: checked, type: stream, path: /checked}
"""

PRODUCER = """
import os, uuid
import numpy as np
from clara import Driver, Error, FastIOEntry, IOAccess, Payload

log = []

def prepare(driver):
    log.append("P")

def execute(driver, payload):
    log.append("E")
    assert isinstance(payload, Payload)
    # The application data is the same object in every handler.
    assert driver.app_data is log
    # Handler shapes and properties.
    assert isinstance(driver.job_id, uuid.UUID)
    assert driver.job_name == "typed" and driver.stage_name == "producer"
    outs = payload.fastio_output_entries
    assert len(payload.fastio_input_entries) == 0
    assert [e.name for e in outs] == ["grid", "dyn", "dyn0", "uid", "scalar"]

    # A pre-allocated output.
    grid = outs["grid"]
    assert isinstance(grid, FastIOEntry)
    assert grid.is_preallocated and grid.is_allocated and not grid.is_dynamic
    assert grid.dynamic_shape_indices == ()
    assert grid.access == IOAccess.ReadWrite
    assert grid.shape == (3, 224, 224)
    assert grid.element_type == np.float32
    for bad in (lambda: grid.update_shape([0], [4]), grid.allocate):
        try:
            bad()
            raise AssertionError("reshaping a pre-allocated entry must raise")
        except Error as e:
            assert "pre-allocated" in str(e), e
    grid.set_values(np.ones((3, 224, 224)))          # float64 converted to float32

    # Dynamic outputs, with -1 and with 0 as the marker.
    for name, dtype in (("dyn", np.float32), ("dyn0", np.int16)):
        e = outs[name]
        assert e.is_dynamic and not e.is_preallocated and not e.is_allocated
        assert e.dynamic_shape_indices == (1, 3)
        try:
            e.get_numpy()
            raise AssertionError("no memory yet: get_numpy must raise")
        except Error:
            pass
        e.update_shape([1], [5])
        assert not e.is_allocated                      # index 3 is still dynamic
        e.update_shape([0], [4])
        assert e.shape[0] == 3                         # not dynamic: left unchanged
        assert e.update_shape([1, 3], [5, 7]) == (3, 5, 224, 7)
        assert e.is_allocated and e.shape == (3, 5, 224, 7)
        assert e.dynamic_shape_indices == (1, 3)
        view = e.as_numpy()                            # writable: compute in place
        assert view.flags.writeable and view.dtype == dtype
        view[...] = np.arange(view.size, dtype=dtype).reshape(view.shape) % 1000

    # A string and a primitive.
    uid = outs["uid"]
    assert uid.element_type == np.uint8 and uid.shape == (-1,) and uid.is_dynamic
    text = b"1.2.840.10008.5.1.4.1.1.2"
    uid.update_shape([0], [len(text)])
    uid.set_values(text)
    scalar = outs["scalar"]
    assert scalar.shape == (1,) and scalar.is_preallocated
    scalar.set_values(np.float32(3.5))

    # Clara's path variables.
    out_dir = os.environ["NVIDIA_CLARA_OUTPUTPATHS"].split(":")[1]
    assert out_dir == payload.output_entries["report"].path
    with open(os.path.join(out_dir, "log.txt"), "w") as f:
        f.write("".join(log))

def cleanup(driver):
    log.append("C")
    assert log == ["P", "E", "C"], log

driver = Driver(execute_handler=execute, prepare_handler=prepare,
                cleanup_handler=cleanup, app_data=log)
driver.start()
driver.wait_for_completion()
"""

CONSUMER = """
import os
import numpy as np
import clara
import fastio

def execute(driver, payload):
    ins = payload.fastio_input_entries
    grid = ins["grid"]
    assert grid.access == clara.IOAccess.ReadOnly
    assert grid.shape == (3, 224, 224)
    values = grid.get_numpy()
    assert values.dtype == np.float32 and (values == 1).all()
    assert not values.flags.writeable and not grid.as_numpy().flags.writeable
    for bad in (lambda: grid.set_values(np.zeros((3, 224, 224))), lambda: values.__setitem__(0, 2)):
        try:
            bad()
            raise AssertionError("an input must not be writable")
        except (clara.Error, ValueError):
            pass
    for name, dtype in (("dyn", np.float32), ("dyn0", np.int16)):
        e = ins[name]
        assert e.shape == (3, 5, 224, 7), e.shape
        v = e.get_numpy()
        assert v.dtype == dtype
        expect = np.arange(v.size, dtype=dtype).reshape(v.shape) % 1000
        assert (v == expect).all()
        try:
            e.update_shape([1], [6])
            raise AssertionError("an input cannot be reshaped")
        except fastio.ReadOnlyError:
            pass
    assert ins["uid"].get_bytes() == b"1.2.840.10008.5.1.4.1.1.2"
    assert ins["scalar"].get_numpy()[0] == np.float32(3.5)
    # The disk input is the producer's output directory.
    in_dir = os.environ["NVIDIA_CLARA_INPUTPATHS"].split(":")[1]
    with open(os.path.join(in_dir, "log.txt")) as f:
        assert f.read() == "PE"  # written during execute; cleanup comes after
    out_dir = payload.output_entries[0].path
    with open(os.path.join(out_dir, "ok"), "w") as f:
        f.write("ok")

d = clara.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
"""


def test_typed_pipeline_of_python_operators(tmp_path):
    result = run_pipeline(tmp_path, TYPED, {"producer": PRODUCER, "consumer": CONSUMER})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "typed" / "latest" / "consumer" / "checked" / "ok").read_text() == "ok"


FAILING = """
api-version: 0.5.0
name: failing
operators:
- name: op
  command: [PYTHON, DIR/op.py]
  variables: {MODE: MODE_VALUE}
"""

OP = """
import os
from clara import Driver, Error

def execute(driver, payload):
    if os.environ["MODE"] == "false":
        return False
    raise Error("the volume is empty")

def cleanup(driver):
    open(os.path.join(os.environ["MARK_DIR"], "cleaned"), "w").close()

d = Driver(execute_handler=execute, cleanup_handler=cleanup)
d.start()
d.wait_for_completion()
"""


@pytest.mark.parametrize("mode", ["false", "raise"])
def test_failing_execute_fails_the_job_and_still_cleans_up(tmp_path, mode):
    # Execute returning False, or raising clara.Error.
    yaml = FAILING.replace("MODE_VALUE", mode)
    result = run_pipeline(tmp_path, yaml, {"op": OP}, env={"MARK_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert (tmp_path / "cleaned").exists()
    text = result.stdout + result.stderr
    assert ("returned False" if mode == "false" else "the volume is empty") in text, text


def test_driver_rejects_unknown_keywords_and_non_callables(tmp_path, monkeypatch):
    import fastio

    monkeypatch.delenv("FASTIO_CONTEXT", raising=False)
    with pytest.raises(fastio.Error, match="unknown keyword"):
        fastio.Driver(execute_handler=None, notify_handler=print)
    with pytest.raises(fastio.Error, match="callable"):
        fastio.Driver(execute_handler=3)


def test_standalone_operator_runs_its_handlers(tmp_path, monkeypatch):
    # Without `fastio run` an operator runs alone (for debugging), handlers and all.
    import fastio

    monkeypatch.delenv("FASTIO_CONTEXT", raising=False)
    monkeypatch.delenv("FASTIO_PIPELINE", raising=False)
    seen = []
    d = fastio.Driver(
        execute_handler=lambda drv, payload: seen.append((drv.is_standalone, len(payload.fastio_output_entries))),
        cleanup_handler=lambda drv: seen.append("C"),
    )
    with pytest.raises(fastio.Error, match="not called"):
        d.wait_for_completion()
    d.start()
    d.wait_for_completion()
    assert seen == [(True, 0), "C"]
    with pytest.raises(fastio.Error, match="already started"):
        d.start()


def test_demo_with_a_numpy_threshold_step_reports_what_the_rust_demo_reports(tmp_path):
    # The demo pipeline, once with the Rust threshold step and once with
    # examples/demo/threshold.py (numpy, computing in place into its output entry).
    fastio = fastio_command()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    reports = []
    for name, definition in (("demo", "pipeline.yaml"), ("demo-python", "pipeline-python.yaml")):
        result = subprocess.run(
            [fastio, "run", "-q", "--output", str(tmp_path), f"examples/demo/{definition}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        reports.append((tmp_path / name / "latest" / "write-report" / "report" / "report.txt").read_text())
    assert "voxels above the threshold" in reports[0]
    assert reports[1] == reports[0]


ENTRY_RULES = """
api-version: 0.5.0
name: rules
operators:
- name: op
  command: [PYTHON, DIR/op.py]
  output:
  - {name: found, type: array, element-type: int32, shape: [-1]}
  - {name: grid, type: array, element-type: uint16, shape: [2, 3]}
"""

ENTRY_RULES_OP = """
import numpy as np
import fastio

kept = {}

def execute(driver, payload):
    outs = payload.fastio_output_entries
    assert "found" in outs and "nope" not in outs and len(outs) == 2
    assert outs[-1].name == "grid" and outs.names() == ["found", "grid"]
    for key in ("nope", 5, 2.5):
        try:
            outs[key]
            raise AssertionError(f"outs[{key!r}] must raise")
        except fastio.Error:
            pass
    found = payload.fastio_output("found")
    found.update_shape([0], [4])
    view = found.as_numpy()
    view[:] = [1, 2, 3, 4]
    try:
        found.update_shape([0], [8])      # a view of the old memory is alive
        raise AssertionError("reshaping under a live view must raise")
    except fastio.Error as e:
        assert "views" in str(e), e
    del view
    assert found.update_shape([0], [8]) == (8,)
    grid = outs["grid"]
    m = memoryview(grid)                  # buffer protocol: writable for an output
    assert not m.readonly and m.format == "H" and m.shape == (2, 3)
    m[1, 2] = 7
    assert grid.get_numpy()[1, 2] == 7
    assert not grid.get_numpy().flags.writeable
    m.release()
    class Holder:
        __array_interface__ = grid.__array_interface__
    via_interface = np.asarray(Holder())
    assert via_interface.dtype == np.uint16 and via_interface.shape == (2, 3)
    assert via_interface.flags.writeable and via_interface[1, 2] == 7
    del via_interface, Holder
    try:
        grid.set_values(np.zeros(5))
        raise AssertionError("a wrong element count must raise")
    except fastio.Error as e:
        assert "6 elements" in str(e), e
    try:
        grid.set_values(b"\\0" * 5)
        raise AssertionError("a buffer of the wrong size must raise")
    except fastio.Error:
        pass
    kept["grid"] = grid

d = fastio.Driver(execute_handler=execute)
d.start()
d.wait_for_completion()
try:
    kept["grid"].shape
    raise AssertionError("an entry must not be usable after execute")
except fastio.Error as e:
    assert "only during execute" in str(e), e
open(__file__ + ".ok", "w").close()
"""


def test_entry_rules_views_buffers_and_lifetime(tmp_path):
    result = run_pipeline(tmp_path, ENTRY_RULES, {"op": ENTRY_RULES_OP})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "op.py.ok").exists()  # every check in the operator passed
