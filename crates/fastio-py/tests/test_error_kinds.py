"""Each kind of failure raises its own subclass of fastio.Error (the context's refusals are
mapped one by one, as the C API maps them to status codes)."""

import numpy as np
import pytest

import fastio

KINDS = [
    fastio.NotFoundError,
    fastio.AlreadyPublishedError,
    fastio.ReadOnlyError,
    fastio.BusyError,
    fastio.InvalidHandleError,
    fastio.InvalidArgumentError,
    fastio.OutOfMemoryError,
    fastio.DeviceError,
    fastio.JobError,
    fastio.ContextGoneError,
]


def test_every_kind_is_a_fastio_error_and_they_are_distinct():
    assert all(issubclass(kind, fastio.Error) for kind in KINDS)
    assert len(set(KINDS)) == len(KINDS)


def published(ctx, name):
    a = ctx.create(8)
    a.publish(name)
    return a


def freed_name(ctx):
    published(ctx, "gone").free()
    ctx.get("gone")


def released(ctx):
    a = ctx.create(8)
    a.release()
    return a


def read_only_publication(ctx):
    published(ctx, "rw")
    ctx.get("rw", fastio.IOAccess.ReadOnly).publish("ro")
    ctx.get("ro", fastio.IOAccess.ReadWrite)


CASES = {
    "get_unknown_name": (lambda ctx: ctx.get("nope"), fastio.NotFoundError),
    "get_freed_name": (freed_name, fastio.NotFoundError),
    "unpublish_unknown_name": (lambda ctx: ctx.unpublish("nope"), fastio.NotFoundError),
    "publish_taken_name": (
        lambda ctx: (published(ctx, "dup"), ctx.create(8).publish("dup")),
        fastio.AlreadyPublishedError,
    ),
    "publish_bad_name": (lambda ctx: ctx.create(8).publish("a b"), fastio.InvalidArgumentError),
    "type_too_large": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.float64, [2]),
        fastio.InvalidArgumentError,
    ),
    "negative_size": (lambda ctx: ctx.create(-1), fastio.InvalidArgumentError),
    "create_beyond_memory": (lambda ctx: ctx.create(1 << 60), fastio.OutOfMemoryError),
    "double_release": (lambda ctx: released(ctx).release(), fastio.InvalidHandleError),
    "use_after_release": (lambda ctx: released(ctx).size, fastio.InvalidHandleError),
    "read_write_get_of_read_only_publication": (read_only_publication, fastio.ReadOnlyError),
    "connect_to_no_server": (
        lambda ctx: fastio.FastIOContext.connect("@fastio-no-such-server"),
        fastio.ContextGoneError,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_failure_raises_its_kind(ctx, case):
    call, kind = CASES[case]
    with pytest.raises(kind) as info:
        call(ctx)
    # Exactly that kind: no other subclass.
    assert type(info.value) is kind, type(info.value)


def test_the_same_refusals_reach_a_client_of_a_server(server):
    ctx = fastio.FastIOContext.connect(server.address)
    with pytest.raises(fastio.NotFoundError):
        ctx.get("nope")
    published(ctx, "dup")
    with pytest.raises(fastio.AlreadyPublishedError):
        ctx.create(8).publish("dup")
