"""copy_to / copy_from between a host allocation and a device one: the mistakes a caller can
make are refused clearly before CUDA is needed, so also on a machine without a GPU. (The
copies themselves, with the host registration made once and undone at release, are tested
in fastio-context on the CPU fake of the CUDA driver.)"""

import pytest

import fastio


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
