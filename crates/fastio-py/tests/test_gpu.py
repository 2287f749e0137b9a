"""The GPU surface on a machine without a CUDA device: every call that needs one says so
clearly (the H200 bundle runs the same calls for real)."""

import ctypes.util

import pytest

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
