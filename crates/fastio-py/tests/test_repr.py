"""Every Python object's repr() reads as Python and says what the object is, never as
Rust debug output; and fastio.serve() tells child processes where it is."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastio

# What Rust's Debug output looks like: `Some(..)`, `Foo { field: .. }`, double-quoted strings.
RUST_DEBUG = re.compile(r'Some\(|None\b|\w+ \{ \w+: |"|Arc\b|transport')


def check(obj, *expected):
    text = repr(obj)
    assert not RUST_DEBUG.search(text), text
    assert text.startswith("<fastio.") or text.startswith("IOAccess."), text
    for part in expected:
        assert part in text, (part, text)
    return text


def test_context_allocation_and_view_reprs(ctx):
    check(ctx, "<fastio.FastIOContext in-process>")
    a = ctx.create(24)
    check(a, "untyped", "24 bytes", "read-write")
    a.set_type_and_dimensions(np.float32, [2, 3])
    check(a, "float32 (2, 3)", "24 bytes", "read-write")
    view = a.as_numpy().base
    view = getattr(view, "obj", view)  # numpy may wrap the View in a memoryview
    assert isinstance(view, fastio.View)
    check(view, "24 bytes", "format 'f'", "shape (2, 3)", "writable")
    a.publish("grid")
    del view
    a.release()
    check(a, "(released)")
    b = ctx.get("grid", fastio.IOAccess.ReadOnly)
    check(b, "float32 (2, 3)", "read-only")
    b.free()
    check(b, "(freed)")
    ctx.publish_array(np.zeros(5, dtype=np.uint8), "line")
    check(ctx.get("line"), "uint8 (5,)")
    assert repr(fastio.IOAccess.ReadOnly) == "IOAccess.ReadOnly"


def test_server_reprs_and_a_connected_context():
    with fastio.serve() as s:
        check(s, f"<fastio.ContextServer '{s.address}'>")
        check(s.context(), "in this process, served at", s.address)
        check(fastio.FastIOContext.connect(s.address), f"connected to '{s.address}'")
        check(fastio.FastIOContext.from_env(), f"connected to '{s.address}'")
    check(s, "(stopped)")


OPERATOR = """
api-version: 0.5.0
name: reprs
operators:
- name: maker
  command: [python, maker.py]
  input:
  - {name: scans, path: /in}
  output:
  - {name: mask, type: array, element-type: uint8, shape: [4, 5]}
  - {name: picked, type: array, element-type: int32, shape: [-1]}
  - {name: report, type: stream, path: /out}
"""


def test_operator_object_reprs(tmp_path, monkeypatch):
    (tmp_path / "pipeline.yaml").write_text(OPERATOR)
    monkeypatch.delenv("FASTIO_CONTEXT", raising=False)
    monkeypatch.setenv("FASTIO_PIPELINE", str(tmp_path / "pipeline.yaml"))
    monkeypatch.setenv("FASTIO_STAGE", "maker")
    monkeypatch.setenv("NVIDIA_CLARA_INPUTPATHS", f"scans:{tmp_path}")
    monkeypatch.setenv("NVIDIA_CLARA_OUTPUTPATHS", f"report:{tmp_path}")
    seen = {}

    def execute(driver, payload):
        outs = payload.fastio_output_entries
        seen["driver"] = repr(driver)
        seen["payload"] = repr(payload)
        seen["collection"] = repr(outs)
        seen["mask"] = repr(outs["mask"])
        seen["picked"] = repr(outs["picked"])
        outs["picked"].update_shape([0], [3])
        seen["picked allocated"] = repr(outs["picked"])
        seen["disk"] = repr(payload.input_entries[0])
        seen["entry"] = outs["mask"]

    d = fastio.Driver(execute_handler=execute)
    d.start()
    d.wait_for_completion()
    for text in seen.values():
        if isinstance(text, str):
            assert not RUST_DEBUG.search(text), text
    assert seen["driver"].startswith("<fastio.Driver job 'reprs' (id ") and "operator 'maker'" in seen["driver"]
    assert seen["payload"] == (
        "<fastio.Payload inputs ['scans'], outputs ['report'], "
        "FastIO inputs [], FastIO outputs ['mask', 'picked']>"
    )
    assert seen["collection"] == "<fastio.PayloadCollection ['mask', 'picked']>"
    assert seen["mask"] == "<fastio.FastIOEntry 'mask': output uint8 (4, 5), pre-allocated>"
    assert seen["picked"] == "<fastio.FastIOEntry 'picked': output int32 (-1,), dynamic, not allocated yet>"
    assert seen["picked allocated"] == "<fastio.FastIOEntry 'picked': output int32 (3,), dynamic, allocated>"
    assert seen["disk"] == f"<fastio.PayloadEntry 'scans': '{tmp_path}'>"
    check(seen["entry"], "<fastio.FastIOEntry 'mask' (execute has returned)>")


CHILD = """
import numpy as np, fastio
ctx = fastio.FastIOContext.from_env()
a = ctx.get("question", fastio.IOAccess.ReadOnly)
ctx.publish_array(a.as_numpy() * 2, "answer")
print(repr(ctx))
"""


def test_serve_exports_its_address_to_child_processes(monkeypatch):
    monkeypatch.setenv("FASTIO_CONTEXT", "@an-earlier-value")
    with fastio.serve() as s:
        assert os.environ["FASTIO_CONTEXT"] == s.address
        ctx = s.context()
        ctx.publish_array(np.arange(4, dtype=np.int64), "question")
        # A real child process, given no environment of its own: it inherits ours.
        child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)],
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == f"<fastio.FastIOContext connected to '{s.address}'>"
        assert ctx.get("answer").as_numpy().tolist() == [0, 2, 4, 6]
    assert os.environ["FASTIO_CONTEXT"] == "@an-earlier-value"

    monkeypatch.delenv("FASTIO_CONTEXT")
    s = fastio.serve()
    s.stop()
    assert "FASTIO_CONTEXT" not in os.environ
    with fastio.serve(export=False):
        assert "FASTIO_CONTEXT" not in os.environ


def test_every_public_class_has_a_repr_of_its_own():
    # A class added later without one would print `<builtins.X object at 0x...>`.
    classes = [getattr(fastio, n) for n in fastio.__all__ if isinstance(getattr(fastio, n), type)]
    assert len(classes) >= 10
    for cls in classes:
        if issubclass(cls, BaseException):
            continue  # exceptions print their message
        assert "__repr__" in vars(cls), cls
