"""The GPU pipeline's summarize step, in CuPy: the mask goes to the GPU on the operator's
CUDA stream (which fastio made wait, GPU-side, on the threshold step's event), the voxels
are counted per slice there, and the counts come back into the output entries. It checks
its GPU count against a count on the CPU of the same shared memory."""

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


def prepare(driver):
    # At once, while the volume is still being made: no GPU, no job.
    need_gpu()


def execute(driver, payload):
    cupy = need_gpu()
    entry = payload.fastio_input("mask")
    # The threshold step's stream recorded this event at the end of its execute; fastio
    # made this operator's stream wait on it before execute started.
    if entry.cuda_event is None:
        raise RuntimeError("the mask came without the threshold step's CUDA event")
    stream = cupy.cuda.ExternalStream(payload.cuda_stream())
    mask = np.from_dlpack(entry)  # read-only, zero-copy
    with stream:
        on_gpu = cupy.asarray(mask)
        per_slice = on_gpu.reshape(mask.shape[0], -1).sum(axis=1, dtype=cupy.uint64)
        counts = payload.fastio_output("slice-counts").as_numpy()
        per_slice.get(stream=stream, out=counts)  # waits for the stream's work
    total = int(counts.sum())
    payload.fastio_output("voxel-count").set_values([total])
    on_cpu = int(np.count_nonzero(mask))
    if total != on_cpu:
        raise RuntimeError(f"the GPU counted {total} marked voxels, the CPU {on_cpu}")
    busiest = int(counts.argmax())
    print(
        f"gpu-summarize: {total} voxels above the threshold in "
        f"{int((counts > 0).sum())} of {len(counts)} slices (most in slice {busiest}: "
        f"{int(counts[busiest])}); the CPU count agrees; the threshold step's CUDA event "
        f"came with the mask ({entry.cuda_event[:8].hex()}...)"
    )


if __name__ == "__main__":
    d = fastio.Driver(prepare_handler=prepare, execute_handler=execute)
    d.start()
    d.wait_for_completion()
