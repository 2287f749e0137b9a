"""Clara's writer exclusivity, kept by the context: one handle at a time holds an
allocation's write mapping, whether the other handles are in this process or another;
readers are never excluded."""

import signal
import time

import pytest

import fastio
from conftest import spawn


def test_a_second_handle_in_the_same_process_cannot_take_the_write_mapping(ctx):
    first = ctx.create(16)
    first.publish("w")
    second = ctx.get("w")
    first.acquire_write()
    first.acquire_write()  # counted: the same handle may take it again
    with pytest.raises(fastio.BusyError, match="one writer at a time"):
        second.acquire_write()
    first.release_write()
    with pytest.raises(fastio.BusyError):
        second.acquire_write()
    first.release_write()
    second.acquire_write()
    # Only the writer gives it back.
    with pytest.raises(fastio.InvalidHandleError):
        first.release_write()


def test_releasing_the_writing_handle_lets_the_next_writer_in(ctx):
    first = ctx.create(16)
    first.publish("w")
    second = ctx.get("w")
    first.acquire_write()
    first.release()
    second.acquire_write()


def test_a_read_only_handle_cannot_write_and_readers_are_not_excluded(ctx):
    writer = ctx.create(16)
    writer.publish("w")
    reader = ctx.get("w", fastio.IOAccess.ReadOnly)
    writer.acquire_write()
    with pytest.raises(fastio.ReadOnlyError):
        reader.acquire_write()
    assert reader.get_bytes() == bytes(16)


CHILD_WRITER = """
    import fastio, sys
    ctx = fastio.FastIOContext.from_env()
    a = ctx.get("shared")
    a.acquire_write()
    print("writing", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_in_another_process_excludes_until_it_is_killed(server):
    ctx = fastio.FastIOContext.connect(server.address)
    mine = ctx.create(64)
    mine.publish("shared")
    child = spawn(CHILD_WRITER, server.address)
    try:
        assert child.stdout.readline().strip() == "writing"
        with pytest.raises(fastio.BusyError):
            mine.acquire_write()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait(timeout=30)
    # The server lets go when the killed writer's connection closes, which it notices on
    # its own thread: wait for it, boundedly.
    for _ in range(2000):
        try:
            mine.acquire_write()
            break
        except fastio.BusyError:
            time.sleep(0.005)
    else:
        pytest.fail("the killed writer's mapping was never given back")
