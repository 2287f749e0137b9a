"""The GPU pipeline's threshold step, in PyTorch: the volume comes in zero-copy through
DLPack (a CPU tensor over the producer's shared pages), goes to the GPU on the operator's
CUDA stream and is thresholded there, straight into the output entry `mask`, which the
pipeline declares `device: cuda:0`: a CUDA tensor over the entry's own device memory
(torch.from_dlpack of the entry; no copy, nothing comes back to the host). fastio records
an event on the operator's stream at the end of execute and hands it to the next operator
with the mask; execute returns without waiting for the GPU."""

import os

import fastio


def need_gpu():
    """torch with a CUDA device, or a failure that says what is missing."""
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"gpu-threshold needs PyTorch with CUDA and an NVIDIA GPU: {e}") from e
    if not torch.cuda.is_available():
        raise RuntimeError(
            "gpu-threshold needs an NVIDIA GPU: PyTorch sees no CUDA device on this machine"
        )
    return torch


def prepare(driver):
    # At once, while the volume is still being made: no GPU work, no job.
    need_gpu()


def execute(driver, payload):
    torch = need_gpu()
    level = int(os.environ.get("THRESHOLD", "300"))
    output = payload.fastio_output("mask")
    view = output.device_view()
    # The operator's stream: ordered after its inputs' producers, held for the run.
    stream = torch.cuda.ExternalStream(payload.cuda_stream(), device=view.device)
    volume = torch.from_dlpack(payload.fastio_input("volume"))  # CPU, zero-copy
    with torch.cuda.stream(stream):
        mask = torch.from_dlpack(output)  # the entry's device memory, writable
        if not mask.is_cuda or mask.data_ptr() != view.ptr:
            raise RuntimeError(
                f"the mask is not the entry's device memory ({mask.device}, "
                f"{mask.data_ptr():#x} != {view.ptr:#x})"
            )
        on_gpu = volume.to(mask.device, non_blocking=True)
        torch.gt(on_gpu, level, out=mask.view(torch.bool))
    # No synchronisation: the mask is device memory, so fastio records the event the next
    # operator's stream waits on and returns at once.
    print(
        f"gpu-threshold: queued {volume.numel()} voxels on stream {stream.cuda_stream:#x}, "
        f"writing the mask in place at {view.ptr:#x} on cuda:{view.device}"
    )


if __name__ == "__main__":
    d = fastio.Driver(prepare_handler=prepare, execute_handler=execute)
    d.start()
    d.wait_for_completion()
