"""Every failure raises fastio.Error with a message that says what went wrong."""

import numpy as np
import pytest

import fastio


def released(ctx):
    a = ctx.create(8)
    a.release()
    return a


def freed(ctx):
    a = ctx.create(8)
    a.free()
    return a


def published(ctx, name):
    a = ctx.create(8)
    a.publish(name)
    return a


def get_freed(ctx):
    published(ctx, "gone").free()
    ctx.get("gone")


CASES = {
    "get_unknown_name": (lambda ctx: ctx.get("nope"), "no publication named"),
    "get_freed_name": (get_freed, "was freed"),
    "create_negative": (lambda ctx: ctx.create(-5), ">= 0"),
    "create_not_int": (lambda ctx: ctx.create("12"), "must be an int"),
    "create_beyond_memory": (lambda ctx: ctx.create(1 << 60), str(1 << 60)),
    "publish_empty_name": (lambda ctx: ctx.create(8).publish(""), "name"),
    "publish_long_name": (lambda ctx: ctx.create(8).publish("n" * 256), "255"),
    "publish_bad_characters": (lambda ctx: ctx.create(8).publish("a.b c"), "name"),
    "publish_twice": (
        lambda ctx: (published(ctx, "dup"), ctx.create(8).publish("dup")),
        "already published",
    ),
    "publish_not_str": (lambda ctx: ctx.create(8).publish(3), "must be a str"),
    "type_too_large": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.float64, [2]),
        "need 16 bytes",
    ),
    "negative_dimension": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.uint8, [-1]),
        ">= 0",
    ),
    "overflowing_dimensions": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.uint64, [1 << 40, 1 << 40]),
        "overflow",
    ),
    "unknown_type_name": (
        lambda ctx: ctx.create(8).set_type_and_dimensions("float128", [1]),
        "float128",
    ),
    "unsupported_dtype": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.complex64, [1]),
        "cannot be held",
    ),
    "publish_array_bool": (
        lambda ctx: ctx.publish_array(np.array([True]), "b"), "cannot be held"
    ),
    "publish_array_big_endian": (
        lambda ctx: ctx.publish_array(np.arange(3, dtype=">i4"), "be"), "cannot be held"
    ),
    "negative_second_dimension": (
        lambda ctx: ctx.create(8).set_type_and_dimensions(np.uint8, [2, -3]), ">= 0"
    ),
    "publish_array_objects": (
        lambda ctx: ctx.publish_array([object()], "o"), "cannot be held"
    ),
    "use_after_release": (lambda ctx: released(ctx).size, "released"),
    "view_after_release": (lambda ctx: released(ctx).as_numpy(), "released"),
    "double_release": (lambda ctx: released(ctx).release(), "already released"),
    "use_after_free": (lambda ctx: freed(ctx).get_bytes(), "freed"),
    "double_free": (lambda ctx: freed(ctx).free(), "already freed"),
    "publish_after_free": (lambda ctx: freed(ctx).publish("late"), "freed"),
    "set_values_wrong_size": (
        lambda ctx: ctx.create(8).set_values(np.ones(9, dtype=np.uint8)),
        "holds 8 elements",
    ),
    "set_values_bytes_too_long": (
        lambda ctx: ctx.create(8).set_values(b"123456789"), "do not fit"
    ),
    "get_bad_access": (
        lambda ctx: (published(ctx, "acc"), ctx.get("acc", "rw")), "IOAccess.ReadOnly"
    ),
    "connect_bad_address": (
        lambda ctx: fastio.FastIOContext.connect("nowhere"), "@name or fd:N"
    ),
    "connect_no_server": (
        lambda ctx: fastio.FastIOContext.connect("@fastio-no-such-server"),
        "cannot connect",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failure_raises_fastio_error_with_message(ctx, case):
    call, fragment = CASES[case]
    with pytest.raises(fastio.Error) as info:
        call(ctx)
    message = str(info.value)
    assert fragment in message, message


def test_from_env_without_context_names_the_variable(ctx, monkeypatch):
    monkeypatch.delenv("FASTIO_CONTEXT", raising=False)
    with pytest.raises(fastio.Error, match="FASTIO_CONTEXT"):
        fastio.FastIOContext.from_env()


def test_failed_calls_change_nothing(ctx):
    a = ctx.create(8)
    a.set_type_and_dimensions(np.uint32, [2])
    with pytest.raises(fastio.Error):
        a.set_type_and_dimensions(np.uint64, [2])
    assert a.shape == (2,) and a.element_type == np.dtype(np.uint32)
    assert ctx.stats()["resources"] == 1
