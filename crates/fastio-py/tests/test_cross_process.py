"""Zero copy across two real processes joined to one context server."""

import signal
import time

import numpy as np
import fastio
from conftest import spawn

CHILD_WRITER = """
    import sys, numpy as np, fastio
    ctx = fastio.FastIOContext.from_env()
    a = ctx.get("grid")                     # read-write, as in Clara
    view = a.as_numpy()
    print(view.dtype, view.shape, flush=True)
    sys.stdin.readline()                    # parent: "write"
    view[:] = np.arange(12, dtype=np.float32).reshape(3, 4)
    print("written", flush=True)
    sys.stdin.readline()                    # parent: "check" after its own write
    print(float(view[2, 3]), flush=True)
"""


def test_a_write_in_one_process_is_seen_through_another_process_view(server):
    ctx = fastio.FastIOContext.connect(server.address)
    a = ctx.create(3 * 4 * 4)
    a.set_type_and_dimensions(np.float32, [3, 4])
    a.publish("grid")
    mine = a.as_numpy()  # made before the child writes: no copy can explain what we see
    child = spawn(CHILD_WRITER, server.address)
    try:
        assert child.stdout.readline().split() == ["float32", "(3,", "4)"]
        child.stdin.write("write\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "written"
        np.testing.assert_array_equal(mine, np.arange(12, dtype=np.float32).reshape(3, 4))
        mine[2, 3] = -7.0
        child.stdin.write("check\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "-7.0"
    finally:
        child.stdin.close()
        assert child.wait(timeout=30) == 0


CHILD_ALL_TYPES = """
    import numpy as np, fastio
    ctx = fastio.FastIOContext.from_env()
    for name in ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                 "int64", "float16", "float32", "float64"]:
        a = ctx.get("in_" + name, fastio.IOAccess.ReadOnly)
        view = a.as_numpy()
        assert view.dtype == np.dtype(name) and view.shape == (2, 3), (view.dtype, view.shape)
        ctx.publish_array(view, "out_" + name)   # sent back unchanged
    print("ok", flush=True)
"""


def test_every_element_type_crosses_processes_bit_exact(server):
    # Every element type across processes: there and back again, bit for bit.
    ctx = fastio.FastIOContext.connect(server.address)
    rng = np.random.default_rng(7)
    sent = {}
    for name in ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                 "int64", "float16", "float32", "float64"]:
        size = 6 * np.dtype(name).itemsize
        sent[name] = rng.integers(0, 256, size, dtype=np.uint8).view(name).reshape(2, 3)
        ctx.publish_array(sent[name], "in_" + name)
    child = spawn(CHILD_ALL_TYPES, server.address)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "ok"
    for name, src in sent.items():
        back = ctx.get("out_" + name)
        assert back.element_type == np.dtype(name)
        assert back.size == src.nbytes
        assert back.get_bytes() == src.tobytes()


CHILD_STRAY_WRITE = """
    import ctypes, sys, fastio
    ctx = fastio.FastIOContext.from_env()
    a = ctx.get("ro", fastio.IOAccess.ReadOnly)
    view = a.as_numpy()
    try:
        view[0] = 1
    except ValueError:
        print("numpy refused", flush=True)
    ctypes.memset(view.ctypes.data, 0xFF, 1)  # bypasses numpy: the MMU must stop it
    print("wrote", flush=True)
"""


def test_a_stray_write_to_a_read_only_get_faults(server):
    ctx = fastio.FastIOContext.connect(server.address)
    ctx.publish_array(np.zeros(8, dtype=np.uint8), "ro")
    child = spawn(CHILD_STRAY_WRITE, server.address)
    out, _ = child.communicate(timeout=30)
    assert out.splitlines() == ["numpy refused"]
    assert child.returncode == -signal.SIGSEGV
    assert ctx.get("ro").get_bytes() == bytes(8)


CHILD_HOLDER = """
    import sys, fastio
    ctx = fastio.FastIOContext.from_env()
    a = ctx.create(1 << 20)                 # never published: only this process holds it
    view = a.as_numpy()
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_killed_process_loses_its_handles(server):
    ctx = fastio.FastIOContext.connect(server.address)
    child = spawn(CHILD_HOLDER, server.address)
    assert child.stdout.readline().strip() == "holding"
    assert ctx.stats()["resources"] == 1
    child.kill()
    child.wait(timeout=30)
    for _ in range(200):
        if ctx.stats()["resources"] == 0:
            break
        time.sleep(0.01)
    assert ctx.stats()["resources"] == 0
