"""dynamic.yaml's first step, in PyTorch: finds the voxels of the volume above the
threshold on the GPU. How many there are is known only now, so the output `coords`
(declared `shape: [-1, 3]`, `device: cuda:0`) gets its memory here: `update_shape`
allocates fresh device memory on cuda:0 for exactly that many rows, and the coordinates
are written into it in place (torch.from_dlpack of the entry), on the operator's CUDA
stream. The event fastio records at the end of execute goes with `coords`."""

import os

import fastio
from volume import volume


def need_gpu():
    """torch with a CUDA device, or a failure that says what is missing."""
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"gpu-find needs PyTorch with CUDA and an NVIDIA GPU: {e}") from e
    if not torch.cuda.is_available():
        raise RuntimeError("gpu-find needs an NVIDIA GPU: PyTorch sees no CUDA device")
    return torch


def execute(driver, payload):
    torch = need_gpu()
    level = int(os.environ.get("THRESHOLD", "990"))
    coords = payload.fastio_output("coords")
    if coords.is_allocated or coords.is_preallocated:
        raise RuntimeError("a dynamic output has no memory before its producer sets its shape")
    stream = torch.cuda.ExternalStream(payload.cuda_stream(), device="cuda:0")
    with torch.cuda.stream(stream):
        found = torch.nonzero(volume(torch, "cuda:0") > level).to(torch.int32)
        # The count decides the shape (nonzero syncs the stream: its size is needed here).
        rows = int(found.shape[0])
        coords.update_shape([0], [rows])  # fresh device memory on cuda:0, (rows, 3)
        view = coords.device_view()
        out = torch.from_dlpack(coords)  # the entry's device memory, writable
        if not out.is_cuda or out.data_ptr() != view.ptr or tuple(out.shape) != (rows, 3):
            raise RuntimeError(f"not the entry's memory: {out.device} {tuple(out.shape)}")
        out.copy_(found)
    payload.fastio_output("count").set_values([rows])
    print(
        f"gpu-find: {rows} voxels above {level}; coords allocated at run time as "
        f"{tuple(coords.shape)} int32 on cuda:{view.device} at {view.ptr:#x}, written on "
        f"stream {stream.cuda_stream:#x}"
    )


if __name__ == "__main__":
    d = fastio.Driver(execute_handler=execute)
    d.start()
    d.wait_for_completion()
