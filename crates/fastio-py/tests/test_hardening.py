"""Hostile and careless use: names that are not text, fork(), views kept past execute."""

import os
import signal

import numpy as np
import pytest

import fastio
from test_operator import run_pipeline


def test_a_name_with_a_lone_surrogate_is_refused_clearly(ctx):
    allocation = ctx.create(8)
    with pytest.raises(fastio.Error, match="lone surrogate at index 1"):
        allocation.publish("a\udcff")
    with pytest.raises(fastio.Error, match="lone surrogate"):
        ctx.get("\ud800")
    with pytest.raises(fastio.Error, match="must be a str, not int"):
        allocation.publish(3)


def test_a_forked_child_must_connect_again_and_the_parent_is_unharmed(server):
    ctx = fastio.FastIOContext.connect(server.address)
    before = ctx.create(16)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: nothing it does may reach the parent's conversation.
        code = 1
        try:
            try:
                ctx.create(8)
            except fastio.Error as e:
                if "fork()" in str(e) and "connect again" in str(e):
                    fresh = fastio.FastIOContext.connect(server.address)
                    fresh.create(8).publish("from-the-child")
                    code = 0
            os.write(write, b"%d" % code)
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 8) == b"0"
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection is intact, and the child's fresh one worked.
    after = ctx.create(16)
    assert after.size == before.size == 16
    assert ctx.get("from-the-child", fastio.IOAccess.ReadOnly).size == 8


KEEPER = """
api-version: 0.5.0
name: keeper
operators:
- name: producer
  command: [PYTHON, DIR/producer.py]
  output:
  - {name: grid, type: array, element-type: uint8, shape: [4096]}
- name: consumer
  command: [PYTHON, DIR/consumer.py]
  input:
  - {name: grid, from: producer, type: array, element-type: uint8, shape: [4096]}
"""

PRODUCER = """
import os
from clara import Driver

kept = []

def execute(driver, payload):
    view = payload.fastio_output_entries["grid"].as_numpy()
    view[:] = 7
    kept.append(view)

def cleanup(driver):
    open(os.path.join(os.environ["MARK_DIR"], "writing"), "w").close()
    kept[0][0] = 99
    open(os.path.join(os.environ["MARK_DIR"], "landed"), "w").close()

d = Driver(execute_handler=execute, cleanup_handler=cleanup)
d.start()
d.wait_for_completion()
"""

CONSUMER = """
from clara import Driver

def execute(driver, payload):
    pass

Driver(execute_handler=execute).start()
"""


def test_a_numpy_view_of_an_output_kept_past_execute_cannot_write(tmp_path):
    result = run_pipeline(
        tmp_path,
        KEEPER,
        {"producer": PRODUCER, "consumer": CONSUMER},
        env={"MARK_DIR": str(tmp_path)},
    )
    text = result.stdout + result.stderr
    assert (tmp_path / "writing").exists(), text
    assert not (tmp_path / "landed").exists(), "the late write went through"
    assert result.returncode != 0
    assert "signal 11" in text or "SIGSEGV" in text, text


def test_a_read_only_handle_cannot_be_turned_read_write(server):
    writer = fastio.FastIOContext.connect(server.address)
    reader = fastio.FastIOContext.connect(server.address)
    other = fastio.FastIOContext.connect(server.address)
    writer.create(64).publish("original")
    handle = reader.get("original", fastio.IOAccess.ReadOnly)
    handle.publish("alias")
    with pytest.raises(fastio.Error, match="published from a read-only handle"):
        other.get("alias")
    assert other.get("alias", fastio.IOAccess.ReadOnly).size == 64
    view = np.asarray(handle)
    assert not view.flags.writeable


FORKER = """
api-version: 0.5.0
name: forker
operators:
- name: parent
  command: [PYTHON, DIR/parent.py]
"""

PARENT = """
import os
import fastio
from clara import Driver

def execute(driver, payload):
    mine = fastio.FastIOContext.from_env()      # the operator's own connection (fd:N)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The child cannot share its parent's fd:N connection: from_env connects anew.
            child = fastio.FastIOContext.from_env()
            child.create(8).publish("from-the-child")
            code = 0
        except Exception as e:
            print("child:", e, flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child could not connect"
    assert mine.get("from-the-child", fastio.IOAccess.ReadOnly).size == 8
    open(os.path.join(os.environ["MARK_DIR"], "child-published"), "w").close()

Driver(execute_handler=execute).start()
"""


def test_a_forked_child_of_an_operator_connects_on_its_own(tmp_path):
    result = run_pipeline(tmp_path, FORKER, {"parent": PARENT}, env={"MARK_DIR": str(tmp_path)})
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert (tmp_path / "child-published").exists(), text
