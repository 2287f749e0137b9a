"""The GPU pipeline's threshold step, in PyTorch: the volume comes in zero-copy through
DLPack (a CPU tensor over the producer's shared pages), goes to the GPU on the operator's
CUDA stream, is thresholded there, and the mask comes back straight into the output
entry's shared memory (a CPU tensor over it, through DLPack). fastio records an event on
the operator's stream at the end of execute and hands it to the next operator with the
mask."""

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
    # At once, while the volume is still being made: no GPU, no job.
    need_gpu()


def execute(driver, payload):
    torch = need_gpu()
    level = int(os.environ.get("THRESHOLD", "300"))
    # The operator's stream: ordered after its inputs' producers, held for the run.
    stream = torch.cuda.ExternalStream(payload.cuda_stream())
    volume = torch.from_dlpack(payload.fastio_input("volume"))  # CPU, zero-copy
    mask = torch.from_dlpack(payload.fastio_output("mask"))  # CPU, zero-copy, writable
    with torch.cuda.stream(stream):
        on_gpu = volume.to("cuda", non_blocking=True)
        marked = (on_gpu > level).to(torch.uint8)
        mask.copy_(marked, non_blocking=True)
    # No synchronisation here: fastio finishes the stream's work on host outputs before
    # the end of execute is reported, and records the event downstream operators wait on.
    print(f"gpu-threshold: queued {volume.numel()} voxels on stream {stream.cuda_stream:#x}")


if __name__ == "__main__":
    d = fastio.Driver(prepare_handler=prepare, execute_handler=execute)
    d.start()
    d.wait_for_completion()
