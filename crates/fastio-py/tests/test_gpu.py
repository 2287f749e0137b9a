"""The GPU surface on a machine without a CUDA device: every call that needs one says so
clearly (the H200 bundle runs the same calls for real)."""

import ctypes.util
import os
import subprocess
import sys

import pytest

import fastio

from test_operator import run_pipeline

NO_CUDA = ctypes.util.find_library("cuda") is None


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA driver")
def test_asking_for_the_operator_stream_without_cuda_fails_execute_clearly(tmp_path):
    yaml = """
    api-version: 0.5.0
    name: stream
    operators:
    - name: gpu-step
      command: [PYTHON, DIR/op.py]
      output:
      - {name: volume, type: array, element-type: float32, shape: [4]}
    """
    op = """
    import fastio
    def execute(driver, payload):
        try:
            payload.cuda_stream()
        except fastio.Error as e:
            print("REFUSED:", e, flush=True)
            raise
    fastio.Driver(execute_handler=execute).start()
    """
    result = run_pipeline(tmp_path, yaml, {"op": op})
    assert result.returncode != 0
    assert "gpu-step: reaching CUDA: no CUDA device" in result.stdout + result.stderr


def gpu_stack_present():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return not NO_CUDA


@pytest.mark.skipif(gpu_stack_present(), reason="this machine can run the GPU example")
def test_the_gpu_example_says_it_needs_a_gpu(tmp_path):
    from test_operator import ROOT, fastio_command

    result = subprocess.run(
        [fastio_command(), "run", "--output", str(tmp_path / "out"),
         str(ROOT / "examples" / "gpu-pipeline" / "pipeline.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"),
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    if NO_CUDA:
        # The mask lives in GPU memory: the job cannot even be set up, and says why.
        assert 'FastIO entry "mask" cannot be allocated on cuda:0' in text, text
        assert "no CUDA device" in text, text
    else:
        # A CUDA driver but no PyTorch: the GPU step says what it lacks; the CPU step ran.
        assert "gpu-threshold needs PyTorch with CUDA and an NVIDIA GPU" in text, text
        assert "generate" in text and "FAILED" in text


def test_a_publication_carries_its_producers_cuda_event(server):
    ctx = server.context()
    handle = bytes((3 * i + 1) % 256 for i in range(64))
    a = ctx.create(16)
    a.publish_with_event("with-event", handle)
    b = ctx.create(16)
    b.publish("plain")
    # Another client of the server gets the handle with the memory.
    other = fastio.FastIOContext.connect(server.address)
    assert other.get("with-event").cuda_event == handle
    assert other.get("plain").cuda_event is None
    # Anything with the buffer protocol works, e.g. a torch IPC handle made bytes.
    c = ctx.create(16)
    c.publish_with_event("from-bytearray", bytearray(handle))
    assert other.get("from-bytearray").cuda_event == handle


def test_an_event_handle_must_be_64_bytes(ctx):
    a = ctx.create(16)
    with pytest.raises(fastio.Error, match="64 bytes of a CUDA IPC event handle; got 10 bytes"):
        a.publish_with_event("short", b"0123456789")
    with pytest.raises(fastio.Error, match="not an int"):
        a.publish_with_event("int", 64)
    with pytest.raises(fastio.Error, match="not str"):
        a.publish_with_event("str", "x" * 64)
    # Nothing was published.
    with pytest.raises(fastio.Error):
        ctx.get("short")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA driver")
def test_device_memory_without_cuda_is_refused_clearly(ctx):
    with pytest.raises(fastio.Error, match="(?i)cuda"):
        ctx.create(1024, device=0)
    with pytest.raises(fastio.Error, match="(?i)cuda"):
        ctx.empty([4, 4], "float32", device=0)
    with pytest.raises(fastio.Error, match="hugetlb=True is for host memory"):
        ctx.create(1024, device=0, hugetlb=True)


def test_host_memory_has_no_cuda_array_interface(ctx):
    a = ctx.create(16)
    assert not hasattr(a, "__cuda_array_interface__")  # CuPy and Numba fall back on this
    with pytest.raises(fastio.Error, match="host memory"):
        a.device_view()
    assert a.__dlpack_device__() == (1, 0)


def test_a_host_entry_has_no_device_view_nor_cuda_array_interface(tmp_path):
    yaml = """
    api-version: 0.5.0
    name: host-entry
    operators:
    - name: step
      command: [PYTHON, DIR/op.py]
      output:
      - {name: volume, type: array, element-type: float32, shape: [4]}
    """
    op = """
    import fastio
    def execute(driver, payload):
        out = payload.fastio_output("volume")
        assert not hasattr(out, "__cuda_array_interface__")
        try:
            out.device_view()
        except fastio.Error as e:
            assert 'FastIO entry "volume" is host memory' in str(e), e
        else:
            raise AssertionError("device_view() of a host entry")
        print("host entry refused", flush=True)
    fastio.Driver(execute_handler=execute).start()
    """
    result = run_pipeline(tmp_path, yaml, {"op": op})
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "host entry refused" in text


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA driver")
def test_a_dynamic_device_output_without_cuda_is_refused_when_allocated(tmp_path):
    yaml = """
    api-version: 0.5.0
    name: dynamic-device
    operators:
    - name: infer
      command: [PYTHON, DIR/op.py]
      output:
      - {name: logits, type: array, element-type: float32, shape: [-1, 8], device: cuda:0}
    """
    op = """
    import fastio
    def execute(driver, payload):
        out = payload.fastio_output("logits")
        assert not out.is_preallocated and not out.is_allocated
        try:
            out.update_shape([0], [3])
        except fastio.Error as e:
            print("REFUSED:", e, flush=True)
        else:
            raise AssertionError("allocated on a device without CUDA")
        assert not out.is_allocated
    fastio.Driver(execute_handler=execute).start()
    """
    result = run_pipeline(tmp_path, yaml, {"op": op})
    text = result.stdout + result.stderr
    # The job sets up (nothing is allocated on the device before the producer asks).
    assert result.returncode == 0, text
    assert 'REFUSED: FastIO entry "logits" cannot be allocated on cuda:0' in text, text
    assert "no CUDA device" in text, text


@pytest.mark.skipif(gpu_stack_present(), reason="this machine can run the GPU example")
def test_the_dynamic_gpu_example_starts_and_says_it_needs_a_gpu(tmp_path):
    from test_operator import ROOT, fastio_command

    result = subprocess.run(
        [fastio_command(), "run", "--output", str(tmp_path / "out"),
         str(ROOT / "examples" / "gpu-pipeline" / "dynamic.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"),
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    # A dynamic device output needs no device at set-up: the job runs, and the GPU step
    # says what it lacks.
    assert "cannot set up" not in text, text
    assert "gpu-find needs" in text, text
