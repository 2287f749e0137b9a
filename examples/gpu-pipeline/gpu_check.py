"""dynamic.yaml's second step, in CuPy: the input `coords` is device memory whose shape
gpu-find chose at run time. CuPy reads it in place, read-only, on this operator's CUDA
stream (which fastio made wait for gpu-find's event), and compares it on the GPU with its
own search of the same volume."""

import os

import fastio
from gpu_summarize import external_stream, need_gpu
from volume import volume


def execute(driver, payload):
    cupy = need_gpu()
    level = int(os.environ.get("THRESHOLD", "990"))
    entry = payload.fastio_input("coords")
    count = int(payload.fastio_input("count").as_numpy()[0])
    if entry.cuda_event is None:
        raise RuntimeError("coords came without gpu-find's CUDA event")
    view = entry.device_view()
    if not view.readonly:
        raise RuntimeError("an input's device memory should be read-only")
    if tuple(view.shape) != (count, 3):
        raise RuntimeError(f"coords is {tuple(view.shape)}, gpu-find found {count} voxels")
    with cupy.cuda.Device(view.device):
        stream = external_stream(cupy, payload.cuda_stream())
        memory = cupy.cuda.UnownedMemory(view.ptr, view.nbytes, view, view.device)
        coords = cupy.ndarray(view.shape, view.dtype, cupy.cuda.MemoryPointer(memory, 0))
        with stream:
            expected = cupy.argwhere(volume(cupy) > level).astype(cupy.int32)
            same = expected.shape == coords.shape and bool(cupy.all(expected == coords))
    if not same:
        raise RuntimeError(f"the coordinates differ from a search of the same volume ({count} rows)")
    print(
        f"gpu-check: {count} coordinates read in place on cuda:{view.device} at "
        f"{view.ptr:#x} (read-only), equal to CuPy's own search; gpu-find's event came "
        f"with them ({entry.cuda_event[:8].hex()}...)"
    )


if __name__ == "__main__":
    d = fastio.Driver(execute_handler=execute)
    d.start()
    d.wait_for_completion()
