"""Reference counting: Python objects and views own context handles."""

import gc

import numpy as np
import pytest

import fastio
from conftest import open_fds


def test_deleting_the_last_object_releases_the_handle(ctx):
    a = ctx.create(4096)
    assert ctx.stats()["handles"] == 1
    del a
    stats = ctx.stats()
    assert stats["handles"] == 0
    assert stats["resources"] == 0


def test_a_view_keeps_the_handle_until_it_goes(ctx):
    a = ctx.create(64)
    view = a.as_numpy()
    view[:] = 5
    del a
    assert ctx.stats()["handles"] == 1
    assert view.sum() == 5 * 64  # still mapped
    del view
    assert ctx.stats()["handles"] == 0
    assert ctx.stats()["resources"] == 0


def test_release_with_live_view_defers_to_the_last_view(ctx):
    a = ctx.create(64)
    view = a.as_numpy()
    view[:] = 3
    a.release()
    with pytest.raises(fastio.Error, match="released"):
        a.as_numpy()
    assert ctx.stats()["handles"] == 1
    assert view[0] == 3
    del view
    assert ctx.stats()["handles"] == 0


def test_free_with_live_view_takes_effect_when_the_view_goes(ctx):
    a = ctx.create(64)
    a.publish("f")
    view = a.as_numpy()
    a.free()
    view[:] = 1  # the memory stays mapped while the view lives
    del view
    with pytest.raises(fastio.Error, match="freed"):
        ctx.get("f")
    assert ctx.stats()["resources"] == 0


def test_memoryview_holds_the_handle(ctx):
    a = ctx.create(64)
    m = memoryview(a)
    a.release()
    assert ctx.stats()["handles"] == 1
    m.release()
    assert ctx.stats()["handles"] == 0


def test_context_manager_releases_at_the_end_of_the_block(ctx):
    with ctx.create(64) as a:
        a.publish("cm")
        assert ctx.stats()["handles"] == 1
    assert ctx.stats()["handles"] == 0
    assert not a.is_live


def cycle(ctx, i):
    a = ctx.create(4096)
    a.set_type_and_dimensions(np.float32, [1024])
    a.as_numpy()[:] = i
    a.publish(f"c{i}")
    del a
    b = ctx.get(f"c{i}", fastio.IOAccess.ReadOnly)
    view = b.as_numpy()
    assert view[0] == i
    b.free()
    del view, b


def test_ten_thousand_cycles_leave_nothing_behind(ctx):
    # Warm up first: the context keeps a bounded pool of recycled segments.
    for i in range(10):
        cycle(ctx, i)
    gc.collect()
    fds = open_fds()
    for i in range(10, 10_010):
        cycle(ctx, i)
    gc.collect()
    stats = ctx.stats()
    assert stats["resources"] == 0, stats
    assert stats["handles"] == 0, stats
    assert stats["live_bytes"] == 0, stats
    assert open_fds() == fds


def test_ten_thousand_cycles_through_a_server_leave_nothing_behind(server):
    ctx = fastio.FastIOContext.connect(server.address)
    for i in range(10):
        cycle(ctx, i)
    fds = open_fds()
    for i in range(10, 10_010):
        cycle(ctx, i)
    gc.collect()
    stats = ctx.stats()
    assert stats["resources"] == 0, stats
    assert stats["handles"] == 0, stats
    assert open_fds() == fds
