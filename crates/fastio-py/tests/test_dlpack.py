"""DLPack exports of host memory (`__dlpack__`, `__dlpack_device__`): zero-copy, read-only
flags, capsule lifetime and ownership, and the arguments the standard defines."""

import ctypes
import gc

import numpy as np
import pytest

import fastio
from test_operator import run_pipeline

KDLCPU = (1, 0)

_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype = ctypes.c_int
_capsule_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get_pointer.restype = ctypes.c_void_p
_capsule_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensorVersioned(ctypes.Structure):
    # The DLPack 1.x header (dlpack.h): version, manager_ctx, deleter, flags, dl_tensor.
    _fields_ = [
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


READ_ONLY = 1
IS_COPIED = 2


def versioned(capsule):
    """The DLManagedTensorVersioned a fresh versioned capsule holds."""
    ptr = _capsule_get_pointer(capsule, b"dltensor_versioned")
    return DLManagedTensorVersioned.from_address(ptr)


class Holder:
    """Hands a consumer a capsule made earlier (as a producer object would)."""

    def __init__(self, capsule, device=KDLCPU):
        self.capsule = capsule
        self.device = device

    def __dlpack__(self, **_kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return self.device


def address(array):
    return array.__array_interface__["data"][0]


def test_numpy_takes_an_allocation_without_copying(ctx):
    a = ctx.create(6 * 4)
    a.set_type_and_dimensions(np.float32, [2, 3])
    view = a.as_numpy()
    array = np.from_dlpack(a)
    assert array.dtype == np.float32 and array.shape == (2, 3)
    assert address(array) == address(view)
    assert array.flags.writeable
    array[1, 2] = 7.5
    assert view[1, 2] == 7.5
    assert a.__dlpack_device__() == KDLCPU


def test_untyped_memory_is_exported_as_bytes(ctx):
    a = ctx.create(10)
    array = np.from_dlpack(a)
    assert array.dtype == np.uint8 and array.shape == (10,)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16",
                                   "int32", "int64", "float16", "float32", "float64"])
def test_every_element_type_keeps_its_dtype(ctx, dtype):
    a = ctx.empty([4], dtype)
    a.as_numpy()[:] = np.arange(4)
    array = np.from_dlpack(a)
    assert array.dtype == np.dtype(dtype)
    assert list(array) == [0, 1, 2, 3]


def test_a_read_only_handle_exports_a_read_only_tensor(server):
    ctx = server.context()
    a = ctx.create(16)
    a.set_type_and_dimensions(np.int32, [4])
    a.as_numpy()[:] = [1, 2, 3, 4]
    a.publish("ro")
    reader = ctx.get("ro", fastio.IOAccess.ReadOnly)
    reader.set_type_and_dimensions(np.int32, [4])
    capsule = reader.__dlpack__(max_version=(1, 0))
    assert versioned(capsule).flags & READ_ONLY
    array = np.from_dlpack(reader)
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 9
    assert list(array) == [1, 2, 3, 4]
    # A read-write handle's tensor is not flagged.
    assert not versioned(a.__dlpack__(max_version=(1, 0))).flags & READ_ONLY


def test_read_only_memory_is_refused_to_a_legacy_consumer(server):
    ctx = server.context()
    a = ctx.create(8)
    a.publish("legacy")
    reader = ctx.get("legacy", fastio.IOAccess.ReadOnly)
    with pytest.raises(fastio.ExportError, match="max_version") as raised:
        reader.__dlpack__()
    assert isinstance(raised.value, BufferError)
    assert isinstance(raised.value, fastio.Error)
    # A writable handle still serves legacy consumers (capsule "dltensor").
    legacy = a.__dlpack__()
    assert _capsule_is_valid(legacy, b"dltensor") == 1


def test_the_versioned_capsule_carries_the_layout(ctx):
    a = ctx.create(2 * 3 * 2)
    a.set_type_and_dimensions(np.int16, [2, 3])
    capsule = a.__dlpack__(max_version=(1, 0))
    assert _capsule_is_valid(capsule, b"dltensor_versioned") == 1
    t = versioned(capsule)
    assert (t.major, t.minor) == (1, 0)  # no newer than the consumer asked for
    assert t.flags == 0
    d = t.dl_tensor
    assert (d.device.device_type, d.device.device_id) == KDLCPU
    assert d.ndim == 2
    assert (d.dtype.code, d.dtype.bits, d.dtype.lanes) == (0, 16, 1)  # kDLInt
    assert [d.shape[0], d.shape[1]] == [2, 3]
    assert [d.strides[0], d.strides[1]] == [3, 1]  # in elements, C order
    assert d.data == address(a.as_numpy())
    assert d.byte_offset == 0


def test_the_capsule_keeps_the_memory_past_release_of_the_handle(ctx):
    a = ctx.create(4 * 4)
    a.set_type_and_dimensions(np.float32, [4])
    a.as_numpy()[:] = 2.0
    capsule = a.__dlpack__(max_version=(1, 0))
    a.release()
    with pytest.raises(fastio.Error, match="released"):
        a.__dlpack__()
    assert ctx.stats()["handles"] == 1  # the capsule holds it
    array = np.from_dlpack(Holder(capsule))
    # Consumed: renamed, so its destructor leaves the tensor to the array.
    assert _capsule_is_valid(capsule, b"used_dltensor_versioned") == 1
    del capsule
    gc.collect()
    assert ctx.stats()["handles"] == 1  # the array holds it now
    assert list(array) == [2.0] * 4
    array[:] = 3.0
    del array
    gc.collect()
    stats = ctx.stats()
    assert stats["handles"] == 0 and stats["resources"] == 0


def test_an_unconsumed_capsule_gives_the_handle_back_once(ctx):
    a = ctx.create(64)
    capsules = [a.__dlpack__(max_version=(1, 0)), a.__dlpack__()]
    del a
    assert ctx.stats()["handles"] == 1
    del capsules
    gc.collect()
    stats = ctx.stats()
    assert stats["handles"] == 0 and stats["resources"] == 0


def test_a_consumed_capsule_cannot_be_consumed_again(ctx):
    a = ctx.create(8)
    capsule = a.__dlpack__(max_version=(1, 0))
    first = np.from_dlpack(Holder(capsule))
    with pytest.raises(Exception, match="(?i)capsule|dlpack|consumed"):
        np.from_dlpack(Holder(capsule))
    first[:] = 1
    assert list(a.as_numpy()) == [1] * 8


def test_free_with_a_live_dlpack_array_takes_effect_when_it_goes(ctx):
    a = ctx.create(32)
    a.publish("freed-later")
    array = np.from_dlpack(a)
    a.free()
    array[:] = 4  # still mapped
    del array
    gc.collect()
    with pytest.raises(fastio.Error, match="freed"):
        ctx.get("freed-later")
    assert ctx.stats()["resources"] == 0


def test_copy_true_exports_a_private_writable_copy(server):
    ctx = server.context()
    a = ctx.create(4)
    a.as_numpy()[:] = [1, 2, 3, 4]
    a.publish("c")
    reader = ctx.get("c", fastio.IOAccess.ReadOnly)
    capsule = reader.__dlpack__(max_version=(1, 0), copy=True)
    assert versioned(capsule).flags == IS_COPIED  # copied, and not read-only
    copy = np.from_dlpack(reader, copy=True)
    assert copy.flags.writeable
    assert address(copy) != address(reader.as_numpy())
    copy[0] = 99
    assert list(a.as_numpy()) == [1, 2, 3, 4]
    # copy=False is the zero-copy export.
    same = np.from_dlpack(a, copy=False)
    assert address(same) == address(a.as_numpy())


def test_copy_outlives_the_allocation(ctx):
    a = ctx.create(4)
    a.as_numpy()[:] = 7
    copy = np.from_dlpack(a, copy=True)
    a.free()
    gc.collect()
    assert ctx.stats()["resources"] == 0
    assert list(copy) == [7] * 4


def test_a_device_other_than_the_cpu_is_refused(ctx):
    a = ctx.create(8)
    with pytest.raises(fastio.ExportError, match=r"kDLCPU \(1, 0\).*kDLCUDA \(2, 0\)"):
        a.__dlpack__(max_version=(1, 0), dl_device=(2, 0))
    # Its own device is fine.
    capsule = a.__dlpack__(max_version=(1, 0), dl_device=KDLCPU)
    assert _capsule_is_valid(capsule, b"dltensor_versioned") == 1
    # numpy asks for the CPU when told to.
    assert np.from_dlpack(a, device="cpu").shape == (8,)


def test_a_stream_is_refused_for_host_memory(ctx):
    a = ctx.create(8)
    with pytest.raises(fastio.Error, match="stream must be None"):
        a.__dlpack__(stream=5, max_version=(1, 0))
    # -1 (no synchronisation) asks for nothing and is accepted.
    assert _capsule_is_valid(a.__dlpack__(stream=-1, max_version=(1, 0)), b"dltensor_versioned")


def test_malformed_arguments_are_answered_clearly(ctx):
    a = ctx.create(8)
    with pytest.raises(fastio.Error, match="max_version must be"):
        a.__dlpack__(max_version="1.0")
    with pytest.raises(fastio.Error, match="dl_device must be"):
        a.__dlpack__(max_version=(1, 0), dl_device="cpu")
    with pytest.raises(TypeError):
        a.__dlpack__(max_version=(1, 0), copy="yes")


def test_a_released_handle_has_no_device(ctx):
    a = ctx.create(8)
    a.release()
    with pytest.raises(fastio.Error, match="released"):
        a.__dlpack_device__()


def test_entries_export_writable_outputs_and_read_only_inputs(tmp_path):
    yaml = """
    api-version: 0.5.0
    name: dlpack
    operators:
    - name: producer
      command: [PYTHON, DIR/producer.py]
      output:
      - {name: grid, type: array, element-type: float32, shape: [2, 3]}
    - name: consumer
      command: [PYTHON, DIR/consumer.py]
      input:
      - {name: grid, from: producer, type: array, element-type: float32, shape: [2, 3]}
    """
    producer = """
    import numpy as np, fastio
    def execute(driver, payload):
        out = payload.fastio_output("grid")
        assert out.__dlpack_device__() == (1, 0)
        array = np.from_dlpack(out)
        assert array.flags.writeable and array.shape == (2, 3)
        array[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        assert out.get_numpy()[1, 2] == 5
    fastio.Driver(execute_handler=execute).start()
    """
    consumer = """
    import numpy as np, fastio
    def execute(driver, payload):
        grid = payload.fastio_input("grid")
        array = np.from_dlpack(grid)
        assert not array.flags.writeable
        assert grid.cuda_event is None  # its producer used no CUDA stream
        assert array.__array_interface__["data"][0] == grid.get_numpy().__array_interface__["data"][0]
        assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
        try:
            grid.__dlpack__()
            raise AssertionError("a legacy capsule of an input must be refused")
        except fastio.ExportError:
            pass
    fastio.Driver(execute_handler=execute).start()
    """
    result = run_pipeline(tmp_path, yaml, {"producer": producer, "consumer": consumer})
    assert result.returncode == 0, result.stdout + result.stderr
