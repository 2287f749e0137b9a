"""Operators that join a job instead of being started by it, as the containers of a
Kubernetes Pod do: `fastio k8s serve` hosts the job, and a Python operator (the `fastio`
module), a C operator (the C API) and a Python operator written for Clara (the `clara`
module) find it in their environment (FASTIO_JOB_SOCKET, FASTIO_JOB_SECRET,
FASTIO_STAGE), with no inherited descriptor, and pass their arrays through shared memory.
A wrong secret is refused with a clear error, in Python and in C."""

import os
import shutil
import subprocess
import sys
import textwrap

from pathlib import Path

from test_mixed_pipeline import STATS_C
from test_operator import ROOT, fastio_command

SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90"

# The `fastio` module's driver: makes the array.
MAKE_PY = """
import numpy as np
from fastio import Driver

def execute(driver, payload):
    values = payload.fastio_output_entries["values"]
    numbers = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32)
    values.update_shape([0], [len(numbers)])
    values.set_values(numbers)

driver = Driver(execute_handler=execute)
driver.start()
driver.wait_for_completion()
"""

# Clara's Python API, unchanged: reads what the C operator wrote.
REPORT_PY = """
import os
from clara import Driver

def execute(driver, payload):
    summary = bytes(payload.fastio_input_entries["summary"].get_numpy()).decode()
    count = int(payload.fastio_input_entries["voxel-count"].get_numpy()[0])
    with open(os.environ["RESULT"], "w") as f:
        f.write(f"{summary}; sum {count}\\n")

driver = Driver(execute_handler=execute)
driver.start()
driver.wait_for_completion()
"""

PIPELINE = """
api-version: 0.5.0
name: joined
timeout: 120
operators:
- name: make
  container: {image: example/make}
  output:
  - {name: values, type: array, element-type: int32, shape: [-1]}
- name: stats
  container: {image: example/stats}
  input:
  - {name: values, from: make, type: array, element-type: int32, shape: [-1]}
  output:
  - {name: summary, type: string}
  - {name: voxel-count, type: u64}
- name: report
  container: {image: example/report}
  input:
  - {name: summary, from: stats, type: string}
  - {name: voxel-count, from: stats, type: u64}
"""


# The C operator of the mixed pipeline, saying why when it cannot join.
STATS_JOIN_C = STATS_C.replace(
    "nvidia_clara_cpd__start(cpd, NULL, execute, NULL) != 0) return 1;",
    "nvidia_clara_cpd__start(cpd, NULL, execute, NULL) != 0) {\n"
    "        fprintf(stderr, \"stats: %s\\n\", nvidia_clara_last_error_message());\n"
    "        return 1;\n    }")


def build_c(tmp_path):
    assert STATS_JOIN_C != STATS_C
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (the README's test command expects one)"
    cargo = os.environ.get("CARGO", "cargo")
    subprocess.run([cargo, "build", "--quiet", "-p", "fastio-ffi", "--lib"], cwd=ROOT,
                   check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    (tmp_path / "stats.c").write_text(STATS_JOIN_C)
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", "-I", str(ROOT / "crates/fastio-ffi/include"),
         str(tmp_path / "stats.c"), "-L", str(target), "-lfastio", f"-Wl,-rpath,{target}",
         "-o", str(tmp_path / "stats")],
        check=True,
    )


def join_env(socket, stage, secret=SECRET, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FASTIO_") and not k.startswith("NVIDIA_CLARA_")}
    env.update(FASTIO_JOB_SOCKET=socket, FASTIO_JOB_SECRET=secret, FASTIO_STAGE=stage, **extra)
    return env


def serve(tmp_path, socket, join_wait="60"):
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    return subprocess.Popen(
        [fastio_command(), "k8s", "serve", str(tmp_path / "pipeline.yaml"),
         "--output", str(tmp_path / "out"), "--save", "--join-wait", join_wait],
        env={k: v for k, v in join_env(socket, "").items() if k != "FASTIO_STAGE"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def operator(tmp_path, socket, stage, argv, secret=SECRET, **extra):
    return subprocess.Popen(argv, env=join_env(socket, stage, secret, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=60):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_python_c_and_clara_operators_join_a_served_job(tmp_path):
    socket = f"fastio-pytest-join-{os.getpid()}"
    build_c(tmp_path)
    for name, source in {"make": MAKE_PY, "report": REPORT_PY}.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    result = tmp_path / "result.txt"
    # The last operator starts first, before the server is up: it retries.
    report = operator(tmp_path, socket, "report", [sys.executable, str(tmp_path / "report.py")],
                      RESULT=str(result))
    server = serve(tmp_path, socket)
    make = operator(tmp_path, socket, "make", [sys.executable, str(tmp_path / "make.py")])
    stats = operator(tmp_path, socket, "stats", [str(tmp_path / "stats")])
    code, out, err = finish(server)
    ops = {name: finish(p) for name, p in [("make", make), ("stats", stats), ("report", report)]}
    assert code == 0, f"{out}\n{err}\n{ops}"
    for name, (op_code, _, op_err) in ops.items():
        assert op_code == 0, f"{name}: {op_err}"
    assert result.read_text() == "8 numbers, max 9; sum 31\n"
    # The summary is the server's output (the container's log) and its report file.
    assert "job " in out and "succeeded" in out
    assert (tmp_path / "out" / "report.txt").read_text() == out
    for name in ["make", "stats", "report"]:
        assert f"{name}" in out and "finished" in out
    assert (tmp_path / "out" / "arrays" / "make" / "values.npy").is_file()


def test_a_wrong_secret_is_refused_clearly_in_python_and_in_c(tmp_path):
    socket = f"fastio-pytest-wrong-{os.getpid()}"
    build_c(tmp_path)
    (tmp_path / "make.py").write_text(textwrap.dedent(MAKE_PY))
    server = serve(tmp_path, socket, join_wait="3")
    wrong = "0" * 32
    python = operator(tmp_path, socket, "make", [sys.executable, str(tmp_path / "make.py")],
                      secret=wrong)
    c = operator(tmp_path, socket, "stats", [str(tmp_path / "stats")], secret=wrong)
    py_code, _, py_err = finish(python)
    c_code, _, c_err = finish(c)
    # A Python exception that says why, not a crash.
    assert py_code != 0 and "wrong job secret" in py_err.strip().splitlines()[-1], py_err
    assert "Error" in py_err.strip().splitlines()[-1], py_err
    assert c_code != 0 and "wrong job secret" in c_err, c_err
    # Nothing was disturbed: the stages stay free, and the job, which none of its
    # operators joined, fails in bounded time naming them.
    code, out, _ = finish(server)
    assert code == 1
    assert "FAILED" in out and "did not join the job within 3.00 s" in out
