"""The GPU pipeline's summarize step, in CuPy: the mask is device memory (the pipeline
declares it `device: cuda:0`), which CuPy reads in place, read-only, on the operator's
CUDA stream: fastio made that stream wait, GPU-side, on the event the threshold step
recorded after writing it. The voxels are counted per slice there, and only the counts
come back into the host output entries. The counts are checked against a CPU count of
the original volume (the same threshold, on the producer's shared pages)."""

import os

import numpy as np

import fastio


def need_gpu():
    """CuPy with a CUDA device, or a failure that says what is missing."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"gpu-summarize needs CuPy and an NVIDIA GPU: {e}") from e
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"gpu-summarize needs an NVIDIA GPU: {e}") from e
    if devices == 0:
        raise RuntimeError("gpu-summarize needs an NVIDIA GPU: CuPy sees no CUDA device")
    return cupy


class _StreamHandle:
    """A CUstream given as an integer, offered through the CUDA stream protocol
    (`__cuda_stream__` returns (version 0, handle)), which CuPy 14's Stream.from_external takes."""

    def __init__(self, ptr):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def external_stream(cupy, ptr):
    """A CuPy stream over a stream made elsewhere (CuPy 14's Stream.from_external; older
    releases have ExternalStream)."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamHandle(ptr))
    return cupy.cuda.ExternalStream(ptr)


def prepare(driver):
    # At once, while the volume is still being made: no GPU work, no job.
    need_gpu()


def execute(driver, payload):
    cupy = need_gpu()
    level = int(os.environ.get("THRESHOLD", "300"))
    entry = payload.fastio_input("mask")
    # The threshold step's stream recorded this event at the end of its execute; fastio
    # made this operator's stream wait on it before execute started.
    if entry.cuda_event is None:
        raise RuntimeError("the mask came without the threshold step's CUDA event")
    view = entry.device_view()  # the entry's device memory, mapped read-only here
    if not view.readonly:
        raise RuntimeError("an input's device memory should be read-only")
    with cupy.cuda.Device(view.device):
        stream = external_stream(cupy, payload.cuda_stream())
        # CuPy over the same device memory, no copy; `view` keeps it mapped.
        memory = cupy.cuda.UnownedMemory(view.ptr, view.nbytes, view, view.device)
        mask = cupy.ndarray(view.shape, view.dtype, cupy.cuda.MemoryPointer(memory, 0))
        with stream:
            per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1, dtype=cupy.uint64)
            counts = payload.fastio_output("slice-counts").as_numpy()
            per_slice.get(stream=stream, out=counts)  # waits for the stream's work
    total = int(counts.sum())
    payload.fastio_output("voxel-count").set_values([total])
    # The CPU cross-check, from the volume itself.
    volume = np.from_dlpack(payload.fastio_input("volume"))
    on_cpu = np.count_nonzero(volume > level, axis=(1, 2)).astype(np.uint64)
    if not np.array_equal(counts, on_cpu):
        bad = int(np.flatnonzero(counts != on_cpu)[0])
        raise RuntimeError(
            f"the GPU counted {int(counts[bad])} marked voxels in slice {bad}, the CPU "
            f"{int(on_cpu[bad])} (totals {total} and {int(on_cpu.sum())})"
        )
    busiest = int(counts.argmax())
    print(
        f"gpu-summarize: {total} voxels above the threshold in "
        f"{int((counts > 0).sum())} of {len(counts)} slices (most in slice {busiest}: "
        f"{int(counts[busiest])}), counted on cuda:{view.device} in the mask's device "
        f"memory at {view.ptr:#x}; the CPU count agrees slice by slice; the threshold "
        f"step's CUDA event came with the mask ({entry.cuda_event[:8].hex()}...)"
    )


if __name__ == "__main__":
    d = fastio.Driver(prepare_handler=prepare, execute_handler=execute)
    d.start()
    d.wait_for_completion()
