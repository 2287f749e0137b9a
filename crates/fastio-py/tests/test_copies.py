"""copy_to / copy_from between a host allocation and a device one: the mistakes a caller can
make are refused clearly before CUDA is needed, so also on a machine without a GPU. (The
copies themselves, with the host registration made once and undone at release, are tested
in fastio-context on the CPU fake of the CUDA driver.)"""

import ctypes.util

import numpy as np
import pytest

import fastio

NO_CUDA = ctypes.util.find_library("cuda") is None


def test_a_host_allocation_is_not_a_copy_destination_on_the_device(ctx):
    a = ctx.create(4096)
    b = ctx.create(4096)
    with pytest.raises(fastio.InvalidArgumentError, match="host memory; it has no device pointer"):
        a.copy_to(b)
    with pytest.raises(fastio.InvalidArgumentError, match="host memory; it has no device pointer"):
        a.copy_from(b)


def test_an_allocation_is_not_copied_onto_itself(ctx):
    a = ctx.create(4096)
    with pytest.raises(fastio.InvalidArgumentError, match="onto itself"):
        a.copy_to(a)


def test_released_allocations_and_other_objects_are_refused(ctx):
    a = ctx.create(4096)
    gone = ctx.create(4096)
    gone.release()
    with pytest.raises(fastio.InvalidHandleError, match="released"):
        a.copy_to(gone)
    with pytest.raises(fastio.InvalidHandleError, match="released"):
        gone.copy_from(a)
    with pytest.raises(TypeError):
        a.copy_to(bytearray(4096))


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA driver")
def test_without_cuda_there_is_no_device_allocation_to_copy_to(ctx):
    with pytest.raises(fastio.Error, match="CUDA"):
        ctx.create(4096, device=0)


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_bytes_round_trip_through_device_memory(ctx):
    n = 8 << 20
    src = ctx.empty((n,), np.uint8)
    np.asarray(src)[:] = np.arange(n) % 251
    dev = ctx.create(n, device=0)
    back = ctx.empty((n,), np.uint8)
    src.copy_to(dev)
    src.copy_to(dev)
    back.copy_from(dev)
    assert np.array_equal(np.asarray(back), np.asarray(src))
