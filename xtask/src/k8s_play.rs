//! `cargo xtask k8s-play [--remove-images]`: the rendered Pods run for real, under
//! `podman kube play` (as root; podman and runc from the distribution), and their results
//! are checked against local runs of the same pipelines:
//!
//! 1. one run: `fastio k8s render examples/demo/pipeline.yaml`, its Pod played, and its
//!    report (written by `fastio k8s serve` to the output volume) compared with `fastio
//!    run` of the same definition: the same operators with the same outcomes, the same
//!    entries (types, bytes, readers, medium), the same result files byte for byte
//!    (saved arrays, the stream output); times excluded;
//! 2. a failed run: the same with a `threshold` that fails (its THRESHOLD is not a
//!    number): the Pod's context server exits 1, and its report names the same failure and
//!    the same cancelled operators as the local run's;
//! 3. many runs: the Indexed Job of examples/demo/pipeline-studies.yaml over the three
//!    studies of examples/demo/studies.txt, its Pod template played once per index with
//!    the index the Job controller would set, each compared with `fastio run --payload` of
//!    its study, and the three results checked to differ.
//!
//! podman is not Kubernetes: it has no Job controller, and podman 4.3 neither expands
//! `$(VAR)` references nor honours `subPath` / `subPathExpr` or `secretKeyRef`s to a
//! Secret of the same file. Before playing, this command therefore does what the Job
//! controller and the kubelet would do, and nothing else: the Job's Pod template becomes
//! a Pod (with the completion index annotation and `JOB_COMPLETION_INDEX`), the Secret's
//! token and `$(VAR)` references are filled in, the ConfigMap becomes a host folder, and
//! a mount of a sub-path of a host folder becomes a mount of that folder. The Pod's
//! containers, images, commands, volumes and the sharing of namespaces are the rendered
//! ones. Pods are removed afterwards; images only with `--remove-images`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn k8s_play(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let remove_images = match args {
        [] => false,
        [flag] if flag == "--remove-images" => true,
        _ => bail!("usage: cargo xtask k8s-play [--remove-images]"),
    };
    crate::image::check_podman()?;
    let uid = output(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "podman runs Pods here as root (rootless podman needs subordinate ids set up): run \
         this command as root"
    );
    crate::image::image(root, &["--demo".to_owned()])?;
    let fastio = root.join("target/release/fastio");
    let work = root.join("target/k8s-play");
    if work.exists() {
        std::fs::remove_dir_all(&work).context("clearing target/k8s-play")?;
    }
    std::fs::create_dir_all(&work)?;
    let played = play_all(root, &fastio, &work);
    if remove_images {
        for image in ["fastio", "fastio-demo"] {
            let _ = podman(&["rmi", &format!("localhost/{image}:{VERSION}")]);
        }
    }
    // The arrays saved by every run are large; the reports stay for reading.
    for entry in walk(&work) {
        if entry.extension().is_some_and(|e| e == "npy") {
            let _ = std::fs::remove_file(entry);
        }
    }
    played?;
    eprintln!("\nk8s-play: every Pod's report equals its local run's (reports in target/k8s-play)");
    Ok(())
}

fn play_all(root: &Path, fastio: &Path, work: &Path) -> anyhow::Result<()> {
    // One run.
    let demo = root.join("examples/demo/pipeline.yaml");
    let local = local_run(fastio, &demo, None, &work.join("local"))?;
    let volume = work.join("volume");
    std::fs::create_dir_all(&volume)?;
    let manifests = work.join("demo.yaml");
    let out = format!("host:{}", volume.display());
    render(
        fastio,
        &[
            demo.to_str().context("path")?,
            "--name",
            "fastio-demo",
            "--output",
            &out,
            "--save-arrays",
            "-o",
            manifests.to_str().context("path")?,
        ],
    )?;
    let pod = play(&manifests, None, work, 0)?;
    compare(&local, &volume.join("fastio-demo"), &pod)?;

    // A failed run: the Pod fails as the local run does.
    let failing = work.join("failing.yaml");
    let text = std::fs::read_to_string(&demo)?;
    ensure!(
        text.contains("THRESHOLD: 300"),
        "the demo's threshold variable moved"
    );
    std::fs::write(
        &failing,
        text.replace("THRESHOLD: 300", "THRESHOLD: not-a-number"),
    )?;
    let local = local_run_failing(fastio, &failing, &work.join("local-failing"))?;
    let manifests = work.join("failing-manifests.yaml");
    render(
        fastio,
        &[
            failing.to_str().context("path")?,
            "--name",
            "fastio-failing",
            "--output",
            &out,
            "-o",
            manifests.to_str().context("path")?,
        ],
    )?;
    let pod = play(&manifests, None, work, 1)?;
    let report = std::fs::read_to_string(volume.join("fastio-failing/report.txt"))?;
    ensure!(
        pod.contains(&report),
        "the server's log does not hold its summary"
    );
    ensure!(
        outcomes(&local) == outcomes(&report),
        "the failed runs differ:\n{:?}\n{:?}",
        outcomes(&local),
        outcomes(&report)
    );
    let failed = |summary: &str| {
        summary
            .lines()
            .find_map(|l| {
                l.split_once(" FAILED after ")
                    .map(|(_, why)| why.split_once(": ").map(|(_, w)| w.to_owned()))
            })
            .flatten()
    };
    ensure!(
        failed(&local).is_some() && failed(&local) == failed(&report),
        "the failures differ: {:?} against {:?}",
        failed(&local),
        failed(&report)
    );
    eprintln!(
        "the failed run: the same operators with the same outcomes, the same failure ({})",
        failed(&report).unwrap_or_default()
    );

    // Many runs: one Pod per study.
    let studies = root.join("examples/demo/studies");
    let list = root.join("examples/demo/studies.txt");
    let definition = root.join("examples/demo/pipeline-studies.yaml");
    let manifests = work.join("studies.yaml");
    let volume = work.join("studies-volume");
    std::fs::create_dir_all(&volume)?;
    let out = format!("host:{}", volume.display());
    let input = format!("host:{}", studies.display());
    render(
        fastio,
        &[
            definition.to_str().context("path")?,
            "--name",
            "fastio-studies",
            "--input",
            &input,
            "--output",
            &out,
            "--payloads",
            list.to_str().context("path")?,
            "--save-arrays",
            "-o",
            manifests.to_str().context("path")?,
        ],
    )?;
    let names: Vec<String> = std::fs::read_to_string(&list)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut results = Vec::new();
    for (index, study) in names.iter().enumerate() {
        let local = local_run(
            fastio,
            &definition,
            Some(&studies.join(study)),
            &work.join(format!("local-{study}")),
        )?;
        let pod = play(&manifests, Some(index), work, 0)?;
        let run = volume.join("fastio-studies").join(index.to_string());
        compare(&local, &run, &pod)?;
        let result = std::fs::read_to_string(run.join("write-report/report/report.txt"))?;
        eprintln!(
            "index {index} (study {study}): {}",
            result.replace('\n', " | ")
        );
        results.push(result);
    }
    let distinct: std::collections::BTreeSet<&String> = results.iter().collect();
    ensure!(
        distinct.len() == results.len(),
        "the studies gave equal results: {results:?}"
    );
    Ok(())
}

/// A local run: its summary and its job folder.
struct Run {
    summary: String,
    folder: PathBuf,
}

fn local_run(
    fastio: &Path,
    definition: &Path,
    payload: Option<&Path>,
    output: &Path,
) -> anyhow::Result<Run> {
    let mut cmd = Command::new(fastio);
    cmd.arg("run")
        .arg(definition)
        .arg("--output")
        .arg(output)
        .args(["--save", "--quiet"]);
    if let Some(payload) = payload {
        cmd.arg("--payload").arg(payload);
    }
    let summary = output_of(&mut cmd)?;
    eprintln!("{summary}");
    let name = std::fs::read_dir(output)?
        .next()
        .context("fastio run made no pipeline folder")??
        .path();
    Ok(Run {
        summary,
        folder: name.join("latest").canonicalize()?,
    })
}

/// A local run expected to fail: its summary.
fn local_run_failing(fastio: &Path, definition: &Path, output: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new(fastio);
    cmd.arg("run")
        .arg(definition)
        .arg("--output")
        .arg(output)
        .arg("--quiet");
    eprintln!("\n$ {}", shown(&cmd));
    let out = cmd.output()?;
    ensure!(
        out.status.code() == Some(1),
        "the failing pipeline's local run exited with {}",
        out.status
    );
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{summary}");
    Ok(summary)
}

fn render(fastio: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(fastio);
    cmd.args(["k8s", "render"]).args(args);
    output_of(&mut cmd).map(drop)
}

/// Plays the rendered manifests as one Pod (for the Job's `index`, if indexed), waits for
/// it to end, checks that its context server exited with `expected`, and returns the
/// server's output; the Pod is removed.
fn play(
    manifests: &Path,
    index: Option<usize>,
    work: &Path,
    expected: i64,
) -> anyhow::Result<String> {
    let (pod, name, deadline) = pod_of(manifests, index, work)?;
    let file = work.join(format!("{name}.pod.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&pod)?)?;
    // Whatever an earlier, interrupted run left.
    let _ = podman(&["pod", "rm", "-f", &name]);
    let played = run_pod(&file, &name, deadline);
    let logs = podman(&["logs", &format!("{name}-fastio-context")]);
    let _ = podman(&["pod", "rm", "-f", &name]);
    let code = played?;
    let logs = logs?;
    eprintln!("{logs}");
    ensure!(
        code == expected,
        "the Pod's context server exited with status {code}, not {expected}"
    );
    eprintln!("the Pod's context server exited with status {code}");
    Ok(logs)
}

fn run_pod(file: &Path, name: &str, deadline: Duration) -> anyhow::Result<i64> {
    podman(&["kube", "play", file.to_str().context("path")?])?;
    let until = Instant::now() + deadline;
    loop {
        let state = podman(&["pod", "inspect", name, "--format", "{{.State}}"])?;
        if state.trim() == "Exited" {
            break;
        }
        ensure!(
            Instant::now() < until,
            "the Pod {name} still runs after {deadline:?} (its Job's activeDeadlineSeconds and a minute)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let code = podman(&[
        "container",
        "inspect",
        &format!("{name}-fastio-context"),
        "--format",
        "{{.State.ExitCode}}",
    ])?;
    code.trim()
        .parse()
        .with_context(|| format!("exit code {code:?}"))
}

/// The Pod the Job controller would make from the rendered Job (for `index`), with what
/// the kubelet would fill in (see the module's documentation); its name, and how long to
/// wait for it.
fn pod_of(
    manifests: &Path,
    index: Option<usize>,
    work: &Path,
) -> anyhow::Result<(Value, String, Duration)> {
    let text = std::fs::read_to_string(manifests)?;
    let mut objects = BTreeMap::new();
    for doc in text.split("\n---\n") {
        let value: Value = serde_yaml_ng::from_str(doc)?;
        if value.is_null() {
            continue; // the heading comment
        }
        let kind = value["kind"].as_str().context("an object without kind")?;
        objects.insert(kind.to_owned(), value);
    }
    let token = objects["Secret"]["stringData"]["token"]
        .as_str()
        .context("the Secret has no token")?
        .to_owned();
    let job = &objects["Job"];
    let job_name = job["metadata"]["name"].as_str().context("job name")?;
    let name = match index {
        Some(i) => format!("{job_name}-{i}"),
        None => job_name.to_owned(),
    };
    // The ConfigMap's files, in a host folder.
    let config = work.join(format!("{name}-config"));
    std::fs::create_dir_all(&config)?;
    for (key, value) in objects["ConfigMap"]["data"]
        .as_object()
        .context("ConfigMap data")?
    {
        std::fs::write(config.join(key), value.as_str().context("ConfigMap value")?)?;
    }
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .context("activeDeadlineSeconds")?;
    let template = &job["spec"]["template"];
    let mut spec = template["spec"].clone();
    let mut volumes: BTreeMap<String, Value> = BTreeMap::new();
    for v in spec["volumes"].as_array().context("volumes")? {
        let mut v = v.clone();
        if v.get("configMap").is_some() {
            v = json!({ "name": v["name"], "hostPath": { "path": config, "type": "Directory" } });
        }
        volumes.insert(v["name"].as_str().context("volume name")?.to_owned(), v);
    }
    let mut extra = Vec::new();
    for c in spec["containers"]
        .as_array_mut()
        .context("containers")?
        .iter_mut()
    {
        // Environment, in order: later values may refer to earlier ones.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let key = e["name"].as_str().context("env name")?.to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if e["valueFrom"]["secretKeyRef"].is_object() {
                token.clone()
            } else if e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .is_some_and(|f| f.contains("job-completion-index"))
            {
                index
                    .context("a completion index outside an Indexed Job")?
                    .to_string()
            } else {
                bail!("an environment value this command cannot fill in: {e}");
            };
            env.push((key, value));
        }
        c["env"] = env
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v }))
            .collect();
        if let Some(args) = c["args"].as_array_mut() {
            for a in args {
                *a = json!(expand(a.as_str().context("an argument")?, &env));
            }
        }
        c["imagePullPolicy"] = json!("Never");
        for m in c["volumeMounts"]
            .as_array_mut()
            .context("volumeMounts")?
            .iter_mut()
        {
            let sub = match (m.get("subPath"), m.get("subPathExpr")) {
                (Some(p), _) => p.as_str().map(str::to_owned),
                (None, Some(p)) => p.as_str().map(|p| expand(p, &env)),
                (None, None) => None,
            };
            let Some(sub) = sub else { continue };
            let volume = &volumes[m["name"].as_str().context("mount name")?];
            let base = volume["hostPath"]["path"]
                .as_str()
                .context("a sub-path of a volume that is not a host folder")?;
            let path = Path::new(base).join(&sub);
            std::fs::create_dir_all(&path)?;
            let name = format!("sub-{}", extra.len());
            extra.push(json!({ "name": name, "hostPath": { "path": path, "type": "Directory" } }));
            let object = m.as_object_mut().context("a mount")?;
            object.remove("subPath");
            object.remove("subPathExpr");
            object.insert("name".into(), json!(name));
        }
    }
    spec["volumes"] = volumes.into_values().chain(extra).collect();
    let mut metadata = json!({ "name": name, "labels": template["metadata"]["labels"] });
    if let Some(i) = index {
        metadata["annotations"] =
            json!({ "batch.kubernetes.io/job-completion-index": i.to_string() });
    }
    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec });
    Ok((pod, name, Duration::from_secs(deadline + 60)))
}

/// `$(NAME)` references to earlier variables replaced by their values, as the kubelet does
/// (an unknown name stays as written).
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Checks a Pod's run against the local run of the same definition.
fn compare(local: &Run, pod_folder: &Path, pod_log: &str) -> anyhow::Result<()> {
    let pod_summary = std::fs::read_to_string(pod_folder.join("report.txt"))
        .context("the Pod wrote no report.txt to the output volume")?;
    ensure!(
        pod_log.contains(&pod_summary),
        "the server's log does not hold the summary it wrote"
    );
    ensure!(
        outcomes(&local.summary) == outcomes(&pod_summary),
        "operators differ:\n{:?}\n{:?}",
        outcomes(&local.summary),
        outcomes(&pod_summary)
    );
    ensure!(
        section(&local.summary, "entries:") == section(&pod_summary, "entries:"),
        "entries differ:\n{}\n---\n{}",
        section(&local.summary, "entries:").join("\n"),
        section(&pod_summary, "entries:").join("\n")
    );
    // Result files: everything but the logs (local) and the report itself (Pod).
    let files = |folder: &Path, skip: &[&str]| -> BTreeMap<PathBuf, Vec<u8>> {
        walk(folder)
            .into_iter()
            .filter_map(|p| {
                let relative = p.strip_prefix(folder).ok()?.to_owned();
                let first = relative
                    .components()
                    .next()?
                    .as_os_str()
                    .to_str()?
                    .to_owned();
                (!skip.contains(&first.as_str()))
                    .then(|| Some((relative, std::fs::read(&p).ok()?)))?
            })
            .collect()
    };
    let (mine, theirs) = (
        files(&local.folder, &["logs"]),
        files(pod_folder, &["report.txt"]),
    );
    ensure!(
        mine.keys().collect::<Vec<_>>() == theirs.keys().collect::<Vec<_>>(),
        "result files differ: {:?} against {:?}",
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &mine {
        ensure!(
            &theirs[path] == bytes,
            "{} differs between the local run and the Pod",
            path.display()
        );
    }
    eprintln!(
        "same operators and outcomes, same entries, {} result files equal byte for byte: {}",
        mine.len(),
        mine.keys()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Each operator's name and outcome (no times).
fn outcomes(summary: &str) -> Vec<(String, String)> {
    section(summary, "operators:")
        .iter()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?.to_owned();
            let outcome = l.rsplit("  ").next()?.trim().to_owned();
            Some((name, outcome))
        })
        .collect()
}

/// The indented lines after `title`.
fn section<'a>(summary: &'a str, title: &str) -> Vec<&'a str> {
    summary
        .lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut queue = vec![dir.to_owned()];
    while let Some(dir) = queue.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => queue.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

fn podman(args: &[&str]) -> anyhow::Result<String> {
    let root = crate::workspace_root();
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", root.join("packaging/containers.conf"))
        .args(args);
    output(&mut cmd)
}

/// Runs `cmd`, echoing it; its stdout, or an error with its stderr.
fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    eprintln!("\n$ {}", shown(cmd));
    output(cmd)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", shown(cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{stdout}{}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
