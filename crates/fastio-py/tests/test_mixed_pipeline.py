"""One pipeline under `fastio run` mixing operators that use the pipeline driver (Python,
C and Rust) with plain programs that do not (a shell script and a Python script reading
and writing folders): the data passes through all five, each plain program starts only
once its inputs are complete, and the summary tells what went where."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from test_operator import ROOT, fastio_command

# Plain: writes numbers into its unnamed output folder, found through Clara's
# NVIDIA_CLARA_OUTPUTPATHS (`name:path`; the name is empty).
FETCH_SH = r"""
echo "fetch start $(date +%s%N)" >> "$LOG"
out=${NVIDIA_CLARA_OUTPUTPATHS#*:}
echo "3 1 4 1 5 9 2 6" > "$out/numbers.txt"
echo "fetch end $(date +%s%N)" >> "$LOG"
"""

# Uses the driver (Clara's Python API): reads the folder, writes a shared-memory array.
PARSE_PY = """
import os, time
import numpy as np
from clara import Driver

def log(what):
    with open(os.environ["LOG"], "a") as f:
        f.write(f"parse {what} {time.time_ns()}\\n")

def prepare(driver):
    log("prepare")

def execute(driver, payload):
    log("execute")
    folder = payload.input_entries[0].path
    with open(os.path.join(folder, "numbers.txt")) as f:
        numbers = np.array(f.read().split(), dtype=np.int32)
    values = payload.fastio_output_entries["values"]
    values.update_shape([0], [len(numbers)])
    values.set_values(numbers)

driver = Driver(prepare_handler=prepare, execute_handler=execute)
driver.start()
driver.wait_for_completion()
"""

# Uses the driver (Clara's C API): reads the array, writes a string and a u64.
STATS_C = r"""
#include <clara.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define TRY(call) do { if ((call) != 0) { \
    fprintf(stderr, "stats: %s: %s\n", #call, nvidia_clara_last_error_message()); \
    return 1; } } while (0)

static nvidia_clara_fastio_entry *find(nvidia_clara_fastio_entry **entries, const char *name) {
    for (size_t i = 0; entries[i] != NULL; i++) {
        char buffer[256];
        size_t len = 0;
        if (nvidia_clara_fastio_entry__name(entries[i], buffer, (int)sizeof buffer, &len) == 0 &&
            strcmp(buffer, name) == 0) return entries[i];
    }
    return NULL;
}

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    nvidia_clara_fastio_entry **in = NULL, **out = NULL;
    TRY(nvidia_clara_payload__fastio_input_entries(payload, &in));
    TRY(nvidia_clara_payload__fastio_output_entries(payload, &out));
    nvidia_clara_fastio_entry *values = find(in, "values");
    nvidia_clara_fastio_entry *summary = find(out, "summary");
    nvidia_clara_fastio_entry *count = find(out, "voxel-count");
    if (!values || !summary || !count) { fprintf(stderr, "stats: entries missing\n"); return 1; }
    int64_t n = 0;
    size_t rank = 0;
    TRY(nvidia_clara_fastio_entry__shape(values, &n, 1, &rank));
    void *data = NULL;
    TRY(nvidia_clara_fastio_entry__map(values, &data));
    const int32_t *v = (const int32_t *)data;
    uint64_t sum = 0;
    int32_t max = v[0];
    for (int64_t i = 0; i < n; i++) { sum += (uint64_t)v[i]; if (v[i] > max) max = v[i]; }
    TRY(nvidia_clara_fastio_entry__unmap(values));

    char text[64];
    int len = snprintf(text, sizeof text, "%lld numbers, max %d", (long long)n, (int)max);
    size_t index = 0;
    int64_t length = len;
    TRY(nvidia_clara_fastio_entry__update_shape(summary, &index, &length, 1));
    void *dst = NULL;
    TRY(nvidia_clara_fastio_entry__map(summary, &dst));
    memcpy(dst, text, (size_t)len);
    TRY(nvidia_clara_fastio_entry__unmap(summary));
    TRY(nvidia_clara_fastio_entry__map(count, &dst));
    memcpy(dst, &sum, sizeof sum);
    TRY(nvidia_clara_fastio_entry__unmap(count));
    return 0;
}

int main(void) {
    nvidia_clara_cpd *cpd = NULL;
    if (nvidia_clara_cpd__create(NULL, NULL, &cpd) != 0 ||
        nvidia_clara_cpd__start(cpd, NULL, execute, NULL) != 0) return 1;
    result outcome = nvidia_clara_cpd__wait_for_completion(cpd);
    nvidia_clara_cpd__release(cpd);
    return outcome == 0 ? 0 : 1;
}
"""

# Plain Python, no driver: reads the Rust operator's report folder, writes its own.
PUBLISH_PY = """
import os, time
with open(os.environ["LOG"], "a") as f:
    f.write(f"publish start {time.time_ns()}\\n")
src = os.environ["NVIDIA_CLARA_INPUTPATHS"].split(":", 1)[1]
dst = os.environ["NVIDIA_CLARA_OUTPUTPATHS"].split(":", 1)[1]
with open(os.path.join(src, "report.txt")) as f:
    report = f.read()
with open(os.path.join(dst, "final.txt"), "w") as f:
    f.write(report.upper())
"""

PIPELINE = """
api-version: 0.5.0
name: mixed
operators:
- name: publish
  command: [PYTHON, DIR/publish.py]
  variables: {LOG: DIR/log}
  input:
  - {name: report, from: write-report, type: stream, element-type: text, path: /in}
  output:
  - {name: final, type: stream, path: /out}
- name: fetch
  command: [sh, DIR/fetch.sh]
  variables: {LOG: DIR/log}
  output:
  - {type: stream, path: /out}
- name: parse
  command: [PYTHON, DIR/parse.py]
  variables: {LOG: DIR/log}
  input:
  - {from: fetch, type: stream, path: /in}
  output:
  - {name: values, type: array, element-type: int32, shape: [-1]}
- name: stats
  command: [DIR/stats]
  input:
  - {name: values, from: parse, type: array, element-type: int32, shape: [-1]}
  output:
  - {name: summary, type: string}
  - {name: voxel-count, type: u64}
- name: write-report
  command: [fastio-demo-op, write-report]
  input:
  - {name: summary, from: stats, type: string}
  - {name: voxel-count, from: stats, type: u64}
  output:
  - {name: report, type: stream, element-type: text, path: /output}
"""


def build_c(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (the README's test command expects one)"
    cargo = os.environ.get("CARGO", "cargo")
    subprocess.run([cargo, "build", "--quiet", "-p", "fastio-ffi", "--lib"], cwd=ROOT,
                   check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    (tmp_path / "stats.c").write_text(STATS_C)
    subprocess.run(
        [cc, "-std=c11", "-Wall", "-Werror", "-I", str(ROOT / "crates/fastio-ffi/include"),
         str(tmp_path / "stats.c"), "-L", str(target), "-lfastio", f"-Wl,-rpath,{target}",
         "-o", str(tmp_path / "stats")],
        check=True,
    )


def events(tmp_path):
    """{(operator, what): nanoseconds} from the log the operators append to."""
    found = {}
    for line in (tmp_path / "log").read_text().splitlines():
        who, what, when = line.split()
        found[(who, what)] = int(when)
    return found


def test_driver_operators_and_plain_programs_mix_in_one_pipeline(tmp_path):
    build_c(tmp_path)
    (tmp_path / "fetch.sh").write_text(textwrap.dedent(FETCH_SH))
    (tmp_path / "parse.py").write_text(textwrap.dedent(PARSE_PY))
    (tmp_path / "publish.py").write_text(textwrap.dedent(PUBLISH_PY))
    (tmp_path / "pipeline.yaml").write_text(
        PIPELINE.replace("PYTHON", sys.executable).replace("DIR", str(tmp_path))
    )
    definition = str(tmp_path / "pipeline.yaml")

    # How each operator will start, and why.
    validated = subprocess.run([fastio_command(), "validate", definition],
                               capture_output=True, text=True, check=True)
    kinds = {line.split(":")[0].strip(): line for line in validated.stdout.splitlines()[1:]}
    for plain in ["fetch", "publish"]:
        assert "plain program" in kinds[plain], validated.stdout
    for driver in ["parse", "stats", "write-report"]:
        assert "uses the pipeline driver" in kinds[driver], validated.stdout

    done = subprocess.run(
        [fastio_command(), "run", "--output", str(tmp_path / "out"), definition],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # The data went shell -> Python -> C -> Rust -> Python, each reading the one before.
    final = next((tmp_path / "out").rglob("final.txt")).read_text()
    assert final == "JOB REPORT\nSUMMARY: 8 NUMBERS, MAX 9\nVOXEL COUNT: 31\n"

    # Order: the Python driver operator prepared at job start and executed after the
    # shell script ended; the plain Python script started after the Rust report existed
    # (it reads report.txt at its first line, and the job succeeded).
    log = events(tmp_path)
    assert log[("fetch", "end")] < log[("parse", "execute")]
    assert log[("parse", "execute")] < log[("publish", "start")]

    # The summary: every operator, and each entry with its medium and readers.
    summary = done.stdout
    for name in ["fetch", "parse", "stats", "write-report", "publish"]:
        assert any(line.strip().startswith(name) for line in summary.splitlines()), summary
    lines = {}
    for line in summary.splitlines():
        words = line.split()
        if words and "." in words[0]:
            lines[words[0]] = line
    assert "disk" in lines["fetch."] and "to parse" in lines["fetch."], summary
    assert "shared memory" in lines["parse.values"] and "to stats" in lines["parse.values"]
    assert "shared memory" in lines["stats.voxel-count"], summary
    assert "to publish" in lines["write-report.report"], summary
    assert "succeeded" in summary, summary


def test_a_plain_program_after_a_failed_driver_operator_never_runs(tmp_path):
    marker = tmp_path / "published"
    (tmp_path / "fail.py").write_text(textwrap.dedent("""
        from clara import Driver
        def execute(driver, payload):
            raise RuntimeError("no series in the payload")
        d = Driver(execute_handler=execute)
        d.start()
        d.wait_for_completion()
    """))
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
        api-version: 0.5.0
        name: t
        operators:
        - name: reader
          command: [{sys.executable}, {tmp_path}/fail.py]
          output:
          - {{path: /out}}
        - name: publish
          command: [sh, -c, "touch {marker}"]
          input:
          - {{from: reader, path: /in}}
    """))
    done = subprocess.run(
        [fastio_command(), "run", "--output", str(tmp_path / "out"),
         str(tmp_path / "pipeline.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "reader: execute failed" in done.stdout, done.stdout
    assert "no series in the payload" in done.stdout + done.stderr
    assert "cancelled before it started" in done.stdout, done.stdout
    assert not marker.exists()
