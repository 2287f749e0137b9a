"""The wheel `cargo xtask dist` builds, installed as a user would on a machine without
Rust: a fresh virtual environment, no cargo on PATH, then the `fastio` command it installs
runs the demo pipeline (with the demo operator the wheel carries) and a pipeline of Python
operators."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PIPELINE = """
api-version: 0.5.0
name: wheel
operators:
- name: producer
  command: [python, producer.py]
  output:
  - {name: grid, type: array, element-type: float32, shape: [2, 3]}
  - {name: picked, type: array, element-type: int32, shape: [-1]}
- name: consumer
  command: [python, consumer.py]
  input:
  - {name: grid, from: producer, type: array, element-type: float32, shape: [2, 3]}
  - {name: picked, from: producer, type: array, element-type: int32, shape: [-1]}
  output:
  - {name: result, type: stream, path: /result}
"""

PRODUCER = """
import numpy as np
import fastio

def execute(driver, payload):
    payload.fastio_output_entries["grid"].as_numpy()[:] = np.arange(6).reshape(2, 3)
    picked = payload.fastio_output_entries["picked"]
    picked.update_shape([0], [4])
    picked.as_numpy()[:] = [7, 1, 7, 3]

driver = fastio.Driver(execute_handler=execute)
driver.start()
driver.wait_for_completion()
"""

CONSUMER = """
import json
import os
import fastio

def execute(driver, payload):
    grid = payload.fastio_input_entries["grid"].get_numpy()
    picked = payload.fastio_input_entries["picked"].get_numpy()
    out = payload.output_entries["result"].path
    with open(os.path.join(out, "result.txt"), "w") as f:
        f.write(f"{fastio.__file__}\\n{grid.sum():g} {picked.tolist()}\\n")

driver = fastio.Driver(execute_handler=execute)
driver.start()
driver.wait_for_completion()
"""


def the_wheel():
    wheels = sorted((ROOT / "dist").glob("fastio-*.whl"))
    if len(wheels) != 1:
        pytest.fail(f"expected one wheel in dist/, found {wheels}: run `cargo xtask dist`")
    return wheels[0]


def test_the_wheel_is_tagged_manylinux_and_declares_the_command():
    wheel = the_wheel()
    assert "-manylinux_2_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read("fastio-0.1.0.dist-info/entry_points.txt").decode()
    assert "fastio=fastio._cli:main" in entry_points.replace(" ", "")
    assert "fastio/_native.abi3.so" in names and "clara/__init__.py" in names
    assert "fastio/_programs/fastio-demo-op" in names


def test_the_wheel_installs_without_rust_and_its_command_runs_a_pipeline(tmp_path):
    wheel = the_wheel()
    venv = tmp_path / "venv"
    # The interpreter this venv is made from, not the project's .venv.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    path = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CARGO_HOME", "RUSTUP_HOME")
    }
    env["PATH"] = path
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(wheel)],
        check=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert (venv / "bin" / "fastio").is_file()

    job = tmp_path / "job"
    job.mkdir()
    (job / "pipeline.yaml").write_text(PIPELINE)
    (job / "producer.py").write_text(textwrap.dedent(PRODUCER))
    (job / "consumer.py").write_text(textwrap.dedent(CONSUMER))

    version = subprocess.run(["fastio", "--version"], env=env, cwd=job,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("fastio "), version

    run = subprocess.run(["fastio", "run", "--output", "out", "pipeline.yaml"], env=env,
                         cwd=job, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "producer" in run.stdout and "consumer" in run.stdout
    # Wherever the job's output folder is (per job, or not), it holds one result.txt.
    (result,) = (job / "out").rglob("consumer/result/result.txt")
    module, values = result.read_text().splitlines()
    assert module.startswith(str(venv)), module  # the operators used the installed wheel
    assert values == "15 [7, 1, 7, 3]"

    # The demo: four operator processes of the program the wheel carries (not on PATH).
    # Its entries add up to more than 64 MiB, so the command, Python here, starts a
    # warm-reserve keeper after it: itself again, through the console script.
    env["FASTIO_WARM_NAME"] = f"wheel-{os.getpid()}"
    env["FASTIO_KEEP_WARM"] = "60"
    assert shutil.which("fastio-demo-op", path=path) is None
    demo = subprocess.run(
        ["fastio", "run", "--quiet", "--output", "demo-out", str(ROOT / "examples/demo/pipeline.yaml")],
        env=env, cwd=job, capture_output=True, text=True, timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    (report,) = (job / "demo-out").rglob("write-report/report/report.txt")
    assert "voxel count: " in report.read_text()
    try:
        keeper = None
        for _ in range(600):
            status = subprocess.run(["fastio", "keep-warm", "--status"], env=env, cwd=job,
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status
            keeper = json.loads(status.stdout)
            if keeper is not None:
                break
            time.sleep(0.05)
        assert keeper is not None, "no keeper after the demo"
        with open(f"/proc/{keeper['pid']}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        assert b"keep-warm" in cmdline and str(venv / "bin" / "fastio").encode() in cmdline, cmdline
    finally:
        subprocess.run(["fastio", "keep-warm", "--stop"], env=env, cwd=job, timeout=60)

    # Ctrl-C reaches the command although Python runs it (Python would hold SIGINT
    # until the Rust call returned, which `serve` never does).
    serve = subprocess.Popen(["fastio", "serve"], env=env, cwd=job, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert serve.stdout.readline().startswith("FASTIO_CONTEXT=@")
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
    finally:
        serve.kill()
        serve.wait()
    assert serve.returncode in (-signal.SIGINT, 130), serve.returncode

    bad = subprocess.run(["fastio", "validate", "missing.yaml"], env=env, cwd=job,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "missing.yaml" in bad.stderr, bad


def test_a_source_install_without_rust_says_what_is_missing(tmp_path):
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         str(ROOT / "crates" / "fastio-py")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode != 0
    out = install.stdout + install.stderr
    assert "cargo was not found on PATH" in out, out
    assert "https://rustup.rs" in out and "Rust 1.95 or newer" in out and "prebuilt wheel" in out
