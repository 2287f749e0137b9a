"""Publications replaced or withdrawn on purpose, as a notebook needs (Clara's
publish-once stays the default), and the wider set of publication names."""

import numpy as np
import pytest

import fastio


def test_rerunning_a_notebook_cell_that_publishes(ctx):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ctx.publish_array(x, "x")
    with pytest.raises(fastio.Error, match="replace it or unpublish it first"):
        ctx.publish_array(x, "x")               # the cell run again, as written
    ctx.publish_array(x * 10, "x", replace=True)  # the documented way
    assert ctx.get("x").as_numpy().tolist() == (x * 10).tolist()
    assert ctx.stats()["publications"] == 1 and ctx.stats()["resources"] == 1


def test_replacing_keeps_old_handles_and_frees_old_memory_with_the_last(ctx):
    ctx.publish_array(np.ones(4, dtype=np.int8), "r")
    old = ctx.get("r", fastio.IOAccess.ReadOnly)
    view = old.as_numpy()
    a = ctx.create(2)
    a.set_type_and_dimensions(np.int8, [2])
    a.as_numpy()[:] = 7
    a.publish("r", replace=True)
    a.release()
    assert ctx.get("r").as_numpy().tolist() == [7, 7]
    assert view.tolist() == [1, 1, 1, 1]
    assert ctx.stats()["resources"] == 2
    old.release()
    del view
    assert ctx.stats()["resources"] == 1


def test_after_free_the_name_can_be_unpublished_and_published_again(ctx):
    ctx.publish_array(np.zeros(3), "y")
    ctx.get("y").free()
    with pytest.raises(fastio.Error, match="was freed"):
        ctx.get("y")
    with pytest.raises(fastio.Error, match="unless replaced or unpublished"):
        ctx.publish_array(np.zeros(3), "y")
    ctx.unpublish("y")
    ctx.publish_array(np.full(3, 2.0), "y")
    assert ctx.get("y").as_numpy().tolist() == [2.0, 2.0, 2.0]
    ctx.unpublish("y")
    with pytest.raises(fastio.Error, match="no publication named 'y'|no publication named \"y\""):
        ctx.get("y")
    with pytest.raises(fastio.Error, match="no publication"):
        ctx.unpublish("y")


def test_publication_names_take_dots_slashes_and_colons(ctx, server):
    for c in (ctx, server.context()):
        for name in ("ct.series1", "patient/1", "patient/1/mask.v2", "run:3"):
            c.publish_array(np.arange(2, dtype=np.uint16), name)
            assert c.get(name).as_numpy().tolist() == [0, 1]
        for bad in ("/abs", "a/../b", "a//b", "tail/", "a b", ""):
            with pytest.raises(fastio.Error, match="not allowed|empty|separate"):
                c.publish_array(np.zeros(1), bad)
