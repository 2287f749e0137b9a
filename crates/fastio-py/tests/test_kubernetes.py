"""`fastio k8s render`: the manifests validate offline against Kubernetes' own schemas
(the kubernetes-validate package ships them), and say what a run on a cluster needs."""

import copy
import pathlib
import re

import kubernetes_validate
import pytest
import yaml

from fastio._native import cli_main

ROOT = pathlib.Path(__file__).resolve().parents[3]
CLARA = ROOT / "examples" / "clara" / "pipeline.yaml"
# The Clara example's layout with operators that use the pipeline driver (in a Pod every
# operator joins the job from its container; plain programs cannot).
JOINING = CLARA.read_text().replace(
    "  description: Copy", "  uses-driver: true\n  description: Copy").replace(
    "  description: Write the names", "  uses-driver: true\n  description: Write the names")
# backoffLimitPerIndex is GA in 1.33.
K8S = "1.33"

# Two operators passing 128 MiB of pre-allocated shared memory, and a dynamic entry.
SHARED = """\
api-version: 0.5.0
name: Shared_Volume
timeout: 90
operators:
- name: make
  container: {image: example/make, tag: "2", command: [make-volume, --slices, "256"]}
  requests: {cpu: 2, memory: 100, gpu: 1}
  variables: {THRESHOLD: 300}
  output:
  - {name: volume, type: array, element-type: int16, shape: [256, 512, 512]}
  - {name: slices, type: array, element-type: int32, shape: [-1]}
- name: use
  container: {image: example/use}
  input:
  - {name: volume, from: make, type: array, element-type: int16, shape: [256, 512, 512]}
  - {name: slices, from: make, type: array, element-type: int32, shape: [-1]}
  output:
  - {name: report, type: stream, path: /report}
"""


def render(tmp_path, *args):
    out = tmp_path / "manifests.yaml"
    code = cli_main(["fastio", "k8s", "render", *map(str, args), "-o", str(out)])
    assert code == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    for doc in docs:
        # Raises kubernetes_validate.ValidationError on any field the schema refuses.
        kubernetes_validate.validate(doc, K8S, strict=True)
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture
def joining(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(JOINING)
    return path


def pod(objects):
    return objects["Job"]["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_one_run_renders_a_job_whose_first_container_is_the_context_server(tmp_path, joining):
    objects = render(tmp_path, joining, "--input", "pvc:studies", "--output", "host:/srv/results",
                     "--payload", "study-1", "--save-arrays")
    assert set(objects) == {"Secret", "ConfigMap", "Job"}
    job = objects["Job"]
    assert job["spec"]["activeDeadlineSeconds"] == 600  # the definition's default timeout
    assert job["spec"]["backoffLimit"] == 0
    assert "completionMode" not in job["spec"]
    spec = pod(objects)
    assert spec["restartPolicy"] == "Never"
    assert spec["imagePullSecrets"] == [{"name": "ngc-clara"}]
    # An ordinary container, not a native sidecar: it ends with the job and its exit status
    # is the job's; it sees the operators' processes, to stop them when the job fails.
    assert "initContainers" not in spec and spec["shareProcessNamespace"] is True
    server, copy_op, list_op = spec["containers"]
    assert server["name"] == "fastio-context" and "restartPolicy" not in server
    assert server["command"] == ["fastio"]
    assert server["args"] == ["k8s", "serve", "/etc/fastio/pipeline.yaml",
                              "--output", "/fastio/output/$(FASTIO_RUN)", "--save"]
    assert copy_op["name"] == "copy" and copy_op["image"] == "clara/examples/centos:centos7"
    assert copy_op["args"][:2] == ["sh", "-c"]  # container.command, handed to the entry point
    assert list_op["image"] == "example/lister:1.10" and list_op["args"] == ["/app/list.py"]
    # requests: cpu and memory (MB) for copy, a GPU for list.
    assert copy_op["resources"]["requests"] == {"cpu": "1", "memory": "256Mi"}
    assert list_op["resources"]["limits"] == {"nvidia.com/gpu": 1}

    # Every container gets the per-job secret and the socket; operators their stage.
    secret = objects["Secret"]
    token = secret["stringData"]["token"]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    for c in [server, copy_op, list_op]:
        env = env_of(c)
        ref = env["FASTIO_JOB_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "token"}
        assert env["FASTIO_JOB_SOCKET"]["value"] == env_of(server)["FASTIO_JOB_SOCKET"]["value"]
    assert env_of(copy_op)["FASTIO_STAGE"]["value"] == "copy"
    assert env_of(list_op)["NVIDIA_CLARA_INPUTPATHS"]["value"] == ":/input"
    assert env_of(list_op)["NVIDIA_CLARA_OUTPUTPATHS"]["value"] == "listing:/output"

    # copy's output reaches list through an emptyDir mounted at each declared path.
    volumes = {v["name"]: v for v in spec["volumes"]}
    [shared] = [m for m in copy_op["volumeMounts"] if m["mountPath"] == "/output"]
    assert volumes[shared["name"]] == {"name": shared["name"], "emptyDir": {}}
    [read] = [m for m in list_op["volumeMounts"] if m["mountPath"] == "/input"]
    assert read["name"] == shared["name"] and read["readOnly"] is True
    # The payload comes from the named input volume's folder; the unread output goes to the
    # output volume, under the run's folder.
    [payload] = [m for m in copy_op["volumeMounts"] if m["mountPath"] == "/input"]
    assert volumes[payload["name"]]["persistentVolumeClaim"] == {"claimName": "studies"}
    assert payload["subPath"] == "study-1" and payload["readOnly"] is True
    [result] = [m for m in list_op["volumeMounts"] if m["mountPath"] == "/output"]
    assert volumes[result["name"]]["hostPath"]["path"] == "/srv/results"
    assert result["subPathExpr"] == "$(FASTIO_RUN)/list/listing"
    # The definition travels as written, in the ConfigMap every container mounts.
    assert objects["ConfigMap"]["data"]["pipeline.yaml"] == JOINING


def test_two_renders_have_different_secrets(tmp_path, joining):
    args = [joining, "--input", "pvc:in", "--output", "pvc:out"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = render(tmp_path / "a", *args)["Secret"]["stringData"]["token"]
    b = render(tmp_path / "b", *args)["Secret"]["stringData"]["token"]
    assert a != b


def test_memory_requests_count_the_preallocated_shared_memory(tmp_path):
    definition = tmp_path / "shared.yaml"
    definition.write_text(SHARED)
    objects = render(tmp_path, definition, "--output", "pvc:out")
    assert objects["Job"]["metadata"]["name"] == "fastio-shared-volume"
    assert objects["Job"]["spec"]["activeDeadlineSeconds"] == 90  # the definition's timeout
    _, make, use = pod(objects)["containers"]
    # 100 MB of its own plus the 128 MiB volume it writes first (the dynamic list is
    # sized at run time and cannot be counted).
    assert make["resources"] == {
        "requests": {"cpu": "2", "memory": "228Mi"},
        "limits": {"memory": "228Mi", "nvidia.com/gpu": 1},
    }
    assert "resources" not in use  # it allocates nothing and asks for nothing
    assert make["args"] == ["make-volume", "--slices", "256"]
    assert env_of(make)["THRESHOLD"]["value"] == "300"
    assert use["image"] == "example/use:latest" and "args" not in use


def test_memory_requests_leave_out_outputs_that_live_on_a_gpu(tmp_path):
    definition = tmp_path / "device.yaml"
    definition.write_text(SHARED.replace(
        "shape: [256, 512, 512]}\n  - {name: slices",
        "shape: [256, 512, 512], device: cuda:0}\n  - {name: slices", 1))
    objects = render(tmp_path, definition, "--output", "pvc:out")
    _, make, _ = pod(objects)["containers"]
    # The 128 MiB volume is GPU memory now: only the operator's own 100 MB is host memory.
    assert make["resources"]["requests"]["memory"] == "100Mi"


def test_many_runs_render_an_indexed_job_one_payload_per_index(tmp_path, joining):
    listing = tmp_path / "payloads.txt"
    listing.write_text("studies/a\n\n# skipped\nstudies/b\nstudies/c\n")
    objects = render(tmp_path, joining, "--input", "pvc:studies", "--output", "pvc:out",
                     "--payloads", listing, "--parallelism", "2")
    spec = objects["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 3 and spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 0  # one failed study does not stop the others
    lines = objects["ConfigMap"]["data"]["payloads"].splitlines()
    server = pod(objects)["containers"][0]

    # What each Pod's context server is told, with the index the Job controller sets
    # (dependent variables expand as the kubelet expands them: earlier ones only).
    def resolve(index):
        values = {}
        for e in server["env"]:
            if e["name"] == "JOB_COMPLETION_INDEX":
                assert "job-completion-index" in e["valueFrom"]["fieldRef"]["fieldPath"]
                values[e["name"]] = str(index)
            elif "value" in e:
                values[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], e["value"])
        args = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], a) for a in server["args"]]
        listed = args[args.index("--payload-list") + 1]
        assert listed == "/etc/fastio/payloads"
        payload = lines[int(args[args.index("--payload-index") + 1])]
        return payload, args[args.index("--output") + 1]

    runs = [resolve(i) for i in range(3)]
    assert [p for p, _ in runs] == ["studies/a", "studies/b", "studies/c"]
    outputs = [o for _, o in runs]
    assert len(set(outputs)) == 3 and all(o.startswith("/fastio/output/") for o in outputs)
    # Payload readers see the whole input volume; their own folder comes from the server.
    copy_op = pod(objects)["containers"][1]
    [payload] = [m for m in copy_op["volumeMounts"] if m["name"] == "fastio-input"]
    assert payload["mountPath"] == "/fastio/payloads" and "subPath" not in payload
    assert "NVIDIA_CLARA_INPUTPATHS" not in env_of(copy_op)


def test_the_schema_check_refuses_a_broken_manifest(tmp_path, joining):
    # Without this, a validator that accepted everything would pass the tests above.
    job = render(tmp_path, joining, "--input", "pvc:in", "--output", "pvc:out")["Job"]
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][1]["resources"]["requests"]["memory"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["restartPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S, strict=True)


@pytest.mark.parametrize("args, message", [
    (["--input", "pvc:in", "--output", "pvc:out", "--payload", "../etc"], "must not contain `..`"),
    (["--input", "pvc:in", "--output", "pvc:out", "--payload", "/abs"], "relative"),
    (["--output", "pvc:out"], "name the input volume"),
    (["--input", "nfs:server", "--output", "pvc:out"], "expected pvc:CLAIM or host:/ABSOLUTE/PATH"),
    (["--input", "pvc:in", "--output", "host:relative"], "expected pvc:CLAIM"),
    (["--input", "pvc:in", "--output", "pvc:out", "--name", "Bad_Name"], "lowercase letters"),
])
def test_render_refuses_bad_arguments_with_a_clear_error(tmp_path, capfd, joining, args, message):
    out = tmp_path / "manifests.yaml"
    assert cli_main(["fastio", "k8s", "render", str(joining), *args, "-o", str(out)]) == 1
    assert message in capfd.readouterr().err
    assert not out.exists()


def test_plain_programs_are_refused_since_they_cannot_join(tmp_path, capfd):
    # The Clara example's operators only read and write folders: in a Pod nothing could
    # hold the second until the first is done.
    out = tmp_path / "manifests.yaml"
    assert cli_main(["fastio", "k8s", "render", str(CLARA), "--input", "pvc:in",
                     "--output", "pvc:out", "-o", str(out)]) == 1
    err = capfd.readouterr().err
    assert "copy, list cannot join the job" in err and "uses-driver: true" in err
    assert not out.exists()


def test_operators_without_an_image_are_named(tmp_path, capfd):
    demo = ROOT / "examples" / "demo" / "pipeline-python.yaml"
    out = tmp_path / "manifests.yaml"
    assert cli_main(["fastio", "k8s", "render", str(demo), "--output", "pvc:out",
                     "-o", str(out)]) == 1
    err = capfd.readouterr().err
    assert "no `container` block: generate, threshold, summarize, write-report" in err
    assert not out.exists()
