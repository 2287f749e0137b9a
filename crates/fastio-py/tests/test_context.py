"""FastIOContext and FastIOAllocation: Clara's Python API (lifetime,
strings and primitives, every element type), zero-copy views and read-only enforcement."""

import numpy as np
import pytest

import clara
import fastio
from fastio import IOAccess

ALL_TYPES = [
    np.uint8, np.uint16, np.uint32, np.uint64,
    np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64,
]


def test_published_allocation_outlives_its_handle_until_freed(ctx):
    # Publish plus the context keep the resource alive after `del`.
    a = ctx.create(1024)
    a.publish("buf")
    del a
    b = ctx.get("buf")
    assert b.size == 1024
    b.free()
    with pytest.raises(fastio.Error, match="freed"):
        ctx.get("buf")


def test_publish_array_float16_reads_back_as_float16(ctx):
    # Publication keeps it alive, second half.
    src = np.arange(12, dtype=np.float16).reshape(3, 4)
    ctx.publish_array(src, "h")
    a = ctx.get("h")
    view = a.as_numpy()
    assert view.dtype == np.float16
    assert view.shape == (3, 4)
    assert a.element_type == np.dtype(np.float16)
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(view, src)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: np.dtype(t).name)
def test_every_element_type_round_trips_bit_exact(ctx, t):
    # A [2,3] array of each of the eleven types, bit for bit, right byte size.
    raw = np.random.default_rng(16).integers(0, 256, 6 * np.dtype(t).itemsize, dtype=np.uint8)
    src = raw.view(t).reshape(2, 3)
    name = "t_" + np.dtype(t).name
    ctx.publish_array(src, name)
    a = ctx.get(name, IOAccess.ReadOnly)
    assert a.element_type == np.dtype(t)
    assert a.shape == (2, 3)
    assert a.size == 6 * np.dtype(t).itemsize  # float16: 12 bytes
    view = a.as_numpy()
    assert view.dtype == np.dtype(t)
    assert view.tobytes() == src.tobytes()
    assert a.get_bytes() == src.tobytes()
    assert memoryview(a).tobytes() == src.tobytes()


def test_string_travels_as_uint8_bytes(ctx):
    # A string is uint8[-1]; the bytes come back unchanged.
    uid = b"1.2.840.10008.5.1.4.1.1.2"
    ctx.publish_array(np.frombuffer(uid, dtype=np.uint8), "uid")
    a = ctx.get("uid")
    assert a.element_type == np.dtype(np.uint8)
    assert a.get_bytes() == uid


def test_primitive_is_a_one_element_array(ctx):
    # An f32 primitive is shape [1]; set_values converts a numpy scalar.
    a = ctx.create(4)
    a.set_type_and_dimensions("f32", [1])
    a.set_values(np.float32(3.5))
    a.publish("p")
    b = ctx.get("p")
    assert b.shape == (1,)
    assert b.as_numpy()[0] == np.float32(3.5)


@pytest.mark.parametrize(
    "short,long",
    [("u8", "uint8"), ("u16", "uint16"), ("u32", "uint32"), ("u64", "uint64"),
     ("i8", "int8"), ("i16", "int16"), ("i32", "int32"), ("i64", "int64"),
     ("f16", "float16"), ("f32", "float32"), ("f64", "float64")],
)
def test_every_alias_names_the_same_element_type(ctx, short, long):
    # The short Clara names mean what the long names mean (u8 is uint8, not
    # numpy's uint64).
    a = ctx.create(64)
    a.set_type_and_dimensions(short, [2])
    b = ctx.create(64)
    b.set_type_and_dimensions(long, [2])
    assert a.element_type == b.element_type == np.dtype(long)


def test_zero_0d_array_is_published_with_shape_one(ctx):
    ctx.publish_array(np.float64(2.25), "scalar")
    assert ctx.get("scalar").shape == (1,)


def test_non_contiguous_array_is_published_in_logical_order(ctx):
    src = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    ctx.publish_array(src, "strided")
    np.testing.assert_array_equal(ctx.get("strided").as_numpy(), src)


def test_views_share_memory_with_the_allocation(ctx):
    a = ctx.create(4 * 6)
    a.set_type_and_dimensions(np.float32, (2, 3))
    v = a.as_numpy()
    assert not v.flags.owndata
    assert np.shares_memory(v, np.asarray(a))  # buffer protocol
    assert np.shares_memory(v, np.asarray(memoryview(a)))
    assert v.ctypes.data == np.asarray(a).ctypes.data


def test_write_through_one_handle_is_seen_through_another(ctx):
    a = ctx.create(8 * 4)
    a.set_type_and_dimensions(np.int64, [4])
    a.publish("shared")
    b = ctx.get("shared")
    b_view = b.as_numpy()
    a.as_numpy()[:] = [10, 20, 30, 40]
    np.testing.assert_array_equal(b_view, [10, 20, 30, 40])


def test_array_interface_describes_the_memory_and_keeps_it_alive(ctx):
    a = ctx.create(2 * 5)
    a.set_type_and_dimensions(np.float16, [5])
    a.as_numpy()[:] = 1.5
    interface = a.__array_interface__
    assert interface["typestr"] == "<f2"
    assert interface["shape"] == (5,)

    class Holder:
        __array_interface__ = interface

    arr = np.asarray(Holder())
    assert arr.dtype == np.float16
    assert arr.flags.writeable
    a.release()
    # The export holds the handle: the memory is still mapped and readable.
    np.testing.assert_array_equal(arr, np.full(5, 1.5, dtype=np.float16))


def test_read_only_get_gives_views_that_cannot_write(ctx):
    ctx.publish_array(np.zeros((2, 2), dtype=np.float32), "ro")
    a = ctx.get("ro", IOAccess.ReadOnly)
    assert a.access == IOAccess.ReadOnly
    v = a.as_numpy()
    assert not v.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        v[0, 0] = 1.0
    with pytest.raises(ValueError):
        v.setflags(write=True)
    assert not np.asarray(a).flags.writeable
    m = memoryview(a)
    assert m.readonly
    with pytest.raises(TypeError):
        m[0] = 1.0
    with pytest.raises(fastio.Error, match="read-only"):
        a.set_values(np.ones((2, 2)))
    with pytest.raises(fastio.Error, match="read-only"):
        a.set_values(b"\0" * 16)
    np.testing.assert_array_equal(ctx.get("ro").as_numpy(), np.zeros((2, 2)))


def test_read_write_handles_give_writable_views(ctx):
    a = ctx.create(16)
    assert a.access == IOAccess.ReadWrite
    v = a.as_numpy()
    assert v.flags.writeable and v.dtype == np.uint8 and v.shape == (16,)
    v[3] = 9
    assert a.get_bytes()[3] == 9


def test_set_values_converts_to_the_element_type(ctx):
    a = ctx.create(2 * 6)
    a.set_type_and_dimensions(np.uint16, [2, 3])
    a.set_values(np.array([[1.9, 2.0, 3.0], [4.0, 5.0, 70000.0]]))
    assert a.as_numpy().dtype == np.uint16
    assert a.as_numpy()[0, 0] == 1
    a.set_values(bytes(range(12)))
    assert a.get_bytes() == bytes(range(12))


def test_clara_module_exports_the_fast_io_classes():
    assert clara.FastIOContext is fastio.FastIOContext
    assert clara.FastIOAllocation is fastio.FastIOAllocation
    assert clara.IOAccess is fastio.IOAccess
    assert clara.Error is fastio.Error
    assert issubclass(fastio.Error, Exception)


def test_empty_gives_a_writable_typed_array_to_fill_in_place_and_publish():
    ctx = fastio.FastIOContext()
    a = ctx.empty((3, 4), np.float32)
    arr = a.as_numpy()
    assert arr.shape == (3, 4) and arr.dtype == np.float32 and arr.flags.writeable
    arr[...] = np.arange(12, dtype=np.float32).reshape(3, 4)
    a.publish("in_place")
    del arr
    a.release()
    got = ctx.get("in_place", fastio.IOAccess.ReadOnly)
    assert np.array_equal(got.as_numpy(), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert got.dimensions == (3, 4)


def test_empty_reuses_this_processs_kept_mapping():
    ctx = fastio.FastIOContext()
    a = ctx.empty(1 << 20, "uint8")
    a.release()
    before = ctx.stats()
    b = ctx.empty(1 << 20, "uint8")
    after = ctx.stats()
    assert after["mappings_reused"] == before["mappings_reused"] + 1
    assert after["mappings_made"] == before["mappings_made"]
    b.release()


def test_empty_refuses_bad_shapes_and_dtypes():
    ctx = fastio.FastIOContext()
    # A zero dimension is an empty array, as numpy's np.empty((0, 3)); a negative one is not.
    assert ctx.empty((0, 3), np.float32).as_numpy().shape == (0, 3)
    with pytest.raises(fastio.Error):
        ctx.empty((-1, 3), np.float32)
    with pytest.raises(fastio.Error):
        ctx.empty((2, 3), "not-a-type")
    with pytest.raises(fastio.Error):
        ctx.empty((1 << 40, 1 << 40), np.float64)


def _hugetlb_pages_free():
    """Free pages of the machine's hugetlb pool and their size, from /proc/meminfo."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0])
    return info.get("HugePages_Free", 0), info.get("Hugepagesize", 2048) * 1024


def test_hugetlb_is_used_where_the_pool_holds_it_and_ordinary_memory_otherwise():
    ctx = fastio.FastIOContext()
    size = 8 << 20
    free, page = _hugetlb_pages_free()
    fits = free * page >= size
    a = ctx.empty(size, "uint8", hugetlb=True)
    # The allocation says which memory it got; either way it works the same.
    assert a.hugetlb is fits
    arr = a.as_numpy()
    arr[:] = 7
    a.publish("huge")
    del arr
    a.release()
    got = ctx.get("huge", IOAccess.ReadOnly)
    assert got.hugetlb is fits
    assert int(got.as_numpy().sum()) == 7 * size
    b = ctx.create(4096, hugetlb=True)
    assert b.hugetlb is (free * page >= 4096)
    assert bytes(b.as_numpy()[:4]) == b"\0\0\0\0"
    c = ctx.create(4096)
    assert c.hugetlb is False
