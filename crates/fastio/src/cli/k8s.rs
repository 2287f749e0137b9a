//! `fastio k8s render`: a pipeline as Kubernetes manifests.
//!
//! One run is a Job with one Pod; many runs are an Indexed Job, one index per payload. The
//! Pod holds the context server, `fastio k8s serve`, as its first container and one
//! container per operator, made from its Clara `container` block. Containers of a Pod
//! share the network namespace, so the server's abstract socket reaches them all and passes
//! memfds between them (SCM_RIGHTS), as it does between local processes.
//!
//! The server is an ordinary container, not a native sidecar: it must end when the job
//! ends (a sidecar that exits is restarted), and its exit status, the job's, then decides
//! whether the Pod, and so the Job, succeeded. Operators that start before it is up retry
//! their connection for a bounded time. The Pod shares one process namespace
//! (`shareProcessNamespace`), so the server can stop operators when the job fails, as
//! `fastio run` does.
//!
//! What the manifests hold, and why:
//! - a Secret with a random per-job token: an abstract socket has no file permissions, so an
//!   operator proves it belongs to the job with the token (and the server checks its uid);
//! - a ConfigMap with the pipeline definition as written (and, for many runs, the payload
//!   list, line `i` for index `i`), mounted read-only at `/etc/fastio`;
//! - stream entries read by another operator as `emptyDir` volumes at their declared paths;
//!   payload inputs from the input volume the user names; stream outputs nobody reads, and
//!   the run's report and logs, on the output volume the user names;
//! - `requests.cpu` as a CPU request, `requests.gpu` as an `nvidia.com/gpu` limit, and
//!   `requests.memory` plus the bytes of the operator's pre-allocated shared-memory outputs
//!   as its memory request (memfd pages are charged to the container that first touches
//!   them, the producer that writes them, and are not bounded by the Pod's `/dev/shm`);
//! - the pipeline's `timeout` as the Job's `activeDeadlineSeconds`; `backoffLimit: 0`,
//!   since a failed run is reported, not silently retried.
//!
//! Every operator must use the pipeline driver (it joins the job from its container): a
//! plain program, which only reads and writes folders, could not be held until its inputs
//! are ready, so such a pipeline is refused, naming the operators.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use fastio::pipeline::{EntryKind, Operator, Pipeline};
use serde_json::{Value, json};

/// Where the ConfigMap (definition, payload list) is mounted in every container.
const CONFIG_DIR: &str = "/etc/fastio";
/// Where the context server sees the output volume (report, logs).
const SERVER_OUTPUT: &str = "/fastio/output";
/// Where the context server sees the whole input volume, for many runs.
const SERVER_PAYLOADS: &str = "/fastio/payloads";
/// Environment an operator container gets to find and join its job.
const SOCKET_ENV: &str = "FASTIO_JOB_SOCKET";
/// The per-job token an operator presents when it joins.
const SECRET_ENV: &str = "FASTIO_JOB_SECRET";
/// The key of the token in the Secret.
const SECRET_KEY: &str = "token";

/// `fastio k8s ...` subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Write Kubernetes manifests for a pipeline: a Job with one Pod per run (the context
    /// server, `fastio k8s serve`, first, then one container per operator image), or with
    /// --payloads an Indexed Job of one run per payload. Prints multi-document YAML.
    Render(Render),
    /// Run one job of a pipeline whose operators join it from the other containers of
    /// the Pod (what a rendered Pod's `fastio-context` container runs): the job's context
    /// server listens at $FASTIO_JOB_SOCKET and admits operators that present
    /// $FASTIO_JOB_SECRET; the life-cycle, failures, the time limit and reclaiming work as
    /// under `fastio run`. The summary goes to stdout (the container's log) and to
    /// OUTPUT/report.txt; the command exits when the job ends, 0 if it succeeded, so the
    /// Pod completes with the job's result.
    Serve(Serve),
}

/// Arguments of `fastio k8s serve`.
#[derive(Args)]
pub struct Serve {
    /// The pipeline definition file.
    pipeline: PathBuf,
    /// The run's folder (on the output volume): the report, saved arrays and the stream
    /// outputs no operator reads.
    #[arg(long)]
    output: PathBuf,
    /// How long every operator has, from the start, to join the job (seconds).
    #[arg(long, default_value_t = 300.0)]
    join_wait: f64,
    /// Save every shared-memory output as OUTPUT/arrays/<operator>/<entry>.npy.
    #[arg(long)]
    save: bool,
    /// For one of many runs: the list of payload folders, one a line (blank lines and `#`
    /// lines skipped), of which this run takes line --payload-index.
    #[arg(long, requires = "payload_index")]
    payload_list: Option<PathBuf>,
    /// For one of many runs: which line of --payload-list (from 0; Kubernetes'
    /// JOB_COMPLETION_INDEX).
    #[arg(long, requires = "payload_list")]
    payload_index: Option<String>,
    /// For one of many runs: where the operators see the input volume that the payload
    /// folders are in.
    #[arg(long, default_value = SERVER_PAYLOADS)]
    payload_root: PathBuf,
}

/// Arguments of `fastio k8s render`.
#[derive(Args)]
pub struct Render {
    /// The pipeline definition file.
    pipeline: PathBuf,
    /// Name of the Job (a DNS label); default `fastio-<pipeline name>`.
    #[arg(long)]
    name: Option<String>,
    /// Namespace to put the objects in; default: none (kubectl's current namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// The image holding the `fastio` command, which runs the context server.
    #[arg(long, default_value = concat!("localhost/fastio:", env!("CARGO_PKG_VERSION")))]
    fastio_image: String,
    /// The volume holding the job's payload: `pvc:CLAIM` or `host:PATH`.
    #[arg(long)]
    input: Option<String>,
    /// The volume that receives stream outputs nobody reads, the report and the logs:
    /// `pvc:CLAIM` or `host:PATH`.
    #[arg(long)]
    output: String,
    /// For one run: the payload's folder inside the input volume (default: its root).
    #[arg(long, conflicts_with = "payloads")]
    payload: Option<String>,
    /// For many runs: a file listing payload folders inside the input volume, one a line;
    /// renders an Indexed Job whose index `i` runs line `i` (blank lines and `#` lines skipped).
    #[arg(long)]
    payloads: Option<PathBuf>,
    /// For many runs: how many Pods run at once (default: Kubernetes' 1).
    #[arg(long, requires = "payloads")]
    parallelism: Option<u32>,
    /// Save every shared-memory output as .npy in the run's folder on the output volume
    /// (`<run>/arrays/<operator>/<entry>.npy`), as `fastio run --save` does.
    #[arg(long)]
    save_arrays: bool,
    /// Write the manifests to this file instead of standard output.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Runs a `fastio k8s` subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Render(args) => {
            let pipeline = super::load(&args.pipeline)?;
            let text = std::fs::read_to_string(&args.pipeline)
                .with_context(|| format!("reading {}", args.pipeline.display()))?;
            let payloads = match &args.payloads {
                Some(path) => Some(read_payloads(path)?),
                None => None,
            };
            let token = random_token()?;
            let yaml = render(&pipeline, &text, &args, payloads.as_deref(), &token)?;
            match &args.out {
                Some(path) => std::fs::write(path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Command::Serve(args) => serve(&args),
    }
}

/// `fastio k8s serve`.
fn serve(args: &Serve) -> anyhow::Result<()> {
    let pipeline = super::load(&args.pipeline)?;
    let env = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| {
                format!(
                    "{var} is not set (the rendered Pod sets it from the job's Secret and name)"
                )
            })
    };
    let socket = env(SOCKET_ENV)?;
    let socket = socket.strip_prefix('@').unwrap_or(&socket).to_owned();
    let secret = env(SECRET_ENV)?;
    let join_wait = std::time::Duration::try_from_secs_f64(args.join_wait)
        .ok()
        .filter(|d| !d.is_zero() && *d <= fastio::pipeline::MAX_TIMEOUT)
        .context("--join-wait must be a positive number of seconds")?;
    let payload = match (&args.payload_list, &args.payload_index) {
        (Some(list), Some(index)) => {
            let payloads = read_payloads(list)?;
            let i: usize = index.trim().parse().with_context(|| {
                format!("--payload-index {index:?}: expected a line number from 0")
            })?;
            let line = payloads.get(i).with_context(|| {
                format!(
                    "--payload-index {i}: {} lists {} payloads",
                    list.display(),
                    payloads.len()
                )
            })?;
            eprintln!("payload {i}: {line}");
            Some(args.payload_root.join(line))
        }
        _ => None,
    };
    let mut options = super::job_options(&pipeline)?;
    options.output_root = args.output.clone();
    if args.save {
        options.save = Some(args.output.join("arrays"));
    }
    let join = fastio::driver::JoinOptions {
        socket,
        secret,
        join_wait,
        payload,
    };
    eprintln!(
        "fastio k8s serve: job of pipeline {:?}, waiting for {} operators to join",
        pipeline.name(),
        pipeline.operators().len()
    );
    // The kubelet stops a Pod (deleted, or past the Job's deadline) with SIGTERM: the job
    // is then cancelled as `fastio run` cancels it, and the report still written.
    let interrupts = super::interrupt::Watch::start(&options.cancel)?;
    // A Pod's log is not a terminal: one line per change.
    let mut display = super::progress::Display::new(false, None);
    let report = fastio::driver::serve_job(&pipeline, &options, &join, &mut |p| display.show(p));
    display.finish();
    let signal = interrupts.stop();
    let report = report?;
    let summary = report.render();
    super::out(format_args!("{summary}"))?;
    let path = args.output.join("report.txt");
    std::fs::write(&path, &summary).with_context(|| format!("writing {}", path.display()))?;
    if let Some(signal) = signal {
        return Err(super::Interrupted(signal).into());
    }
    if !report.succeeded() {
        return Err(super::JobFailed.into());
    }
    Ok(())
}

/// The payload list: one folder a line, blank lines and `#` comments skipped.
fn read_payloads(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let payloads: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if payloads.is_empty() {
        bail!("{} lists no payload", path.display());
    }
    for p in &payloads {
        check_sub_path(p).with_context(|| format!("{}: payload {p:?}", path.display()))?;
    }
    Ok(payloads)
}

/// A folder inside a volume: relative, no `..` (Kubernetes refuses them in `subPath`).
fn check_sub_path(path: &str) -> anyhow::Result<()> {
    if path.starts_with('/') {
        bail!("must be relative to the input volume's root");
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("must not contain `..`");
    }
    Ok(())
}

/// 32 random bytes from the kernel, as hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .context("reading random bytes for the job's secret")?;
    }
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// A DNS-1123 label from free text: lowercase letters, digits and `-`, at most `max` bytes,
/// starting and ending with an alphanumeric.
fn label(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max);
    out.trim_matches('-').to_owned()
}

/// A user-named volume, `pvc:CLAIM` or `host:PATH`, as a Pod volume source.
fn volume_source(spec: &str, flag: &str) -> anyhow::Result<Value> {
    match spec.split_once(':') {
        Some(("pvc", claim)) if !claim.is_empty() => {
            Ok(json!({ "persistentVolumeClaim": { "claimName": claim } }))
        }
        Some(("host", path)) if path.starts_with('/') => {
            Ok(json!({ "hostPath": { "path": path, "type": "Directory" } }))
        }
        _ => bail!("{flag} {spec:?}: expected pvc:CLAIM or host:/ABSOLUTE/PATH"),
    }
}

/// Bytes of the shared memory an operator's pre-allocated outputs hold: the driver makes
/// them before the operator runs, and the operator's writes touch (and are charged) them.
/// Outputs declared `device: cuda:N` live in GPU memory and are not counted.
fn preallocated_bytes(op: &Operator) -> u64 {
    op.outputs()
        .iter()
        .filter(|e| e.kind().is_preallocatable())
        .filter(|e| e.memory() == fastio_context::MemoryKind::Host)
        .filter_map(|e| {
            let t = e.kind().element_type()?;
            let shape = e.kind().declared_shape()?;
            shape
                .declared()
                .iter()
                .try_fold(t.size() as u64, |acc, &d| {
                    acc.checked_mul(u64::try_from(d).ok()?)
                })
        })
        .fold(0u64, u64::saturating_add)
}

/// Renders every object as multi-document YAML.
fn render(
    pipeline: &Pipeline,
    definition: &str,
    args: &Render,
    payloads: Option<&[String]>,
    token: &str,
) -> anyhow::Result<String> {
    let job = match &args.name {
        Some(name) => {
            if label(name, 52) != *name {
                bail!(
                    "--name {name:?}: a Job name must be lowercase letters, digits and `-`, at most 52"
                );
            }
            name.clone()
        }
        None => format!("fastio-{}", label(pipeline.name(), 45)),
    };
    let secret_name = format!("{job}-secret");
    let config_name = format!("{job}-pipeline");
    let socket = format!("fastio-job-{job}");
    if let Some(p) = &args.payload {
        check_sub_path(p).with_context(|| format!("--payload {p:?}"))?;
    }

    // Operators need an image each; every operator without one is named.
    let missing: Vec<&str> = pipeline
        .operators()
        .iter()
        .filter(|op| op.container().is_none())
        .map(Operator::name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: a Pod runs operators from container images; these operators have no \
             `container` block: {}",
            pipeline.origin(),
            missing.join(", ")
        );
    }
    fastio::driver::check_joinable(pipeline).with_context(|| pipeline.origin().to_string())?;
    let mut names: Vec<String> = Vec::new();
    for op in pipeline.operators() {
        let name = label(op.name(), 63);
        if name.is_empty() || name == "fastio-context" || names.contains(&name) {
            bail!(
                "operator {:?}: its container name would be {name:?}, which is empty or taken; \
                 rename the operator",
                op.name()
            );
        }
        names.push(name);
    }

    let has_payload_input = !pipeline.payload_inputs().is_empty();
    let input = match (&args.input, has_payload_input || payloads.is_some()) {
        (Some(spec), _) => Some(volume_source(spec, "--input")?),
        (None, true) => bail!(
            "the pipeline reads a payload (or --payloads was given): name the input volume with \
             --input pvc:CLAIM or --input host:PATH"
        ),
        (None, false) => None,
    };
    let output = volume_source(&args.output, "--output")?;

    let secret_env = json!({
        "name": SECRET_ENV,
        "valueFrom": { "secretKeyRef": { "name": secret_name, "key": SECRET_KEY } }
    });
    let config_mount =
        json!({ "name": "fastio-config", "mountPath": CONFIG_DIR, "readOnly": true });
    let mut volumes = vec![
        json!({ "name": "fastio-config", "configMap": { "name": config_name } }),
        with_name("fastio-output", output),
    ];
    if let Some(input) = &input {
        volumes.push(with_name("fastio-input", input.clone()));
    }

    // One emptyDir per stream output another operator reads.
    let mut mounts: Vec<Vec<Value>> = vec![Vec::new(); pipeline.operators().len()];
    for (i, op) in pipeline.operators().iter().enumerate() {
        for out in op.outputs() {
            let EntryKind::Stream { path, .. } = out.kind() else {
                continue;
            };
            let readers = pipeline.readers(op.name(), out.name());
            if readers.is_empty() {
                let leaf = if out.name().is_empty() {
                    fastio::pipeline::plan::UNNAMED_OUTPUT_DIR
                } else {
                    out.name()
                };
                mounts[i].push(json!({
                    "name": "fastio-output",
                    "mountPath": path,
                    "subPathExpr": format!("$(FASTIO_RUN)/{}/{leaf}", op.name()),
                }));
                continue;
            }
            let volume = format!("disk-{}", volumes.len());
            volumes.push(json!({ "name": volume, "emptyDir": {} }));
            mounts[i].push(json!({ "name": volume, "mountPath": path }));
            for (reader, entry) in readers {
                let EntryKind::Stream { path, .. } = entry.kind() else {
                    continue;
                };
                let r = pipeline
                    .position(reader.name())
                    .expect("a reader is an operator of the pipeline");
                mounts[r].push(json!({ "name": volume, "mountPath": path, "readOnly": true }));
            }
        }
        for entry in op.inputs().iter().filter(|e| e.from().is_none()) {
            let EntryKind::Stream { path, .. } = entry.kind() else {
                continue;
            };
            let mount = match (payloads.is_some(), &args.payload) {
                // Many runs: a Pod template cannot pick a folder by index, so the operator
                // sees every payload, and the context server, which reads line `i` of the
                // list, gives it its own when it joins.
                (true, _) => {
                    json!({ "name": "fastio-input", "mountPath": SERVER_PAYLOADS, "readOnly": true })
                }
                (false, Some(p)) => json!({
                    "name": "fastio-input", "mountPath": path, "readOnly": true, "subPath": p,
                }),
                (false, None) => {
                    json!({ "name": "fastio-input", "mountPath": path, "readOnly": true })
                }
            };
            mounts[i].push(mount);
        }
    }

    // The run's folder on the output volume: the Job's name, and the index for many runs.
    let run_env = json!({
        "name": "FASTIO_RUN",
        "value": if payloads.is_some() { format!("{job}/$(JOB_COMPLETION_INDEX)") } else { job.clone() },
    });
    let join_env = |stage: Option<&str>| {
        let mut env = Vec::new();
        if payloads.is_some() {
            // Set by the Job controller; declared first so that later values can use it.
            env.push(json!({
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": { "fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                } }
            }));
        }
        env.push(run_env.clone());
        env.push(json!({ "name": SOCKET_ENV, "value": socket }));
        env.push(secret_env.clone());
        env.push(
            json!({ "name": "FASTIO_PIPELINE", "value": format!("{CONFIG_DIR}/pipeline.yaml") }),
        );
        if let Some(stage) = stage {
            env.push(json!({ "name": "FASTIO_STAGE", "value": stage }));
        }
        env
    };

    // The context server: the first container; it ends with the job.
    let mut server_args = vec![
        "k8s".to_owned(),
        "serve".to_owned(),
        format!("{CONFIG_DIR}/pipeline.yaml"),
        "--output".to_owned(),
        format!("{SERVER_OUTPUT}/$(FASTIO_RUN)"),
    ];
    let mut server_mounts = vec![
        config_mount.clone(),
        json!({ "name": "fastio-output", "mountPath": SERVER_OUTPUT }),
    ];
    if args.save_arrays {
        server_args.push("--save".to_owned());
    }
    if payloads.is_some() {
        server_args.extend([
            "--payload-list".to_owned(),
            format!("{CONFIG_DIR}/payloads"),
            "--payload-index".to_owned(),
            "$(JOB_COMPLETION_INDEX)".to_owned(),
        ]);
        server_mounts.push(
            json!({ "name": "fastio-input", "mountPath": SERVER_PAYLOADS, "readOnly": true }),
        );
    }
    let server = json!({
        "name": "fastio-context",
        "image": args.fastio_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["fastio"],
        "args": server_args,
        "env": join_env(None),
        "volumeMounts": server_mounts,
    });

    let mut containers = vec![server];
    for ((op, name), mut op_mounts) in pipeline.operators().iter().zip(&names).zip(mounts) {
        let image = op.container().expect("checked above");
        op_mounts.insert(0, config_mount.clone());
        let mut env = join_env(Some(op.name()));
        // Clara's path variables, for operators that read them rather than joining: the
        // declared paths, where the volumes are mounted. With many runs a payload's folder
        // is known only once the context server has read the list, so it is left out.
        let paths = |entries: &[fastio::pipeline::Entry], skip_payload: bool| {
            let entries: Vec<fastio::operator::PathEntry> = entries
                .iter()
                .filter(|e| !(skip_payload && e.from().is_none()))
                .filter_map(|e| match e.kind() {
                    EntryKind::Stream { path, .. } => Some(fastio::operator::PathEntry {
                        name: e.name().to_owned(),
                        path: path.to_string_lossy().into_owned(),
                    }),
                    _ => None,
                })
                .collect();
            fastio::operator::format_paths(&entries)
        };
        let (inputs, outputs) = (
            paths(op.inputs(), payloads.is_some()),
            paths(op.outputs(), false),
        );
        if !inputs.is_empty() {
            env.push(json!({ "name": fastio::operator::INPUT_PATHS_ENV, "value": inputs }));
        }
        if !outputs.is_empty() {
            env.push(json!({ "name": fastio::operator::OUTPUT_PATHS_ENV, "value": outputs }));
        }
        for (k, v) in op.variables() {
            env.push(json!({ "name": k, "value": v }));
        }
        let mut container = json!({
            "name": name,
            "image": image.reference(),
            "env": env,
            "volumeMounts": op_mounts,
        });
        // Clara hands `container.command` to the image's entry point: Kubernetes' `args`.
        if let Some(command) = image.command() {
            container["args"] = json!(command);
        }
        let resources = resources(op);
        if resources != json!({}) {
            container["resources"] = resources;
        }
        containers.push(container);
    }

    let mut pod = json!({
        "restartPolicy": "Never",
        // The server stops operators (SIGTERM, then SIGKILL) when the job fails, as
        // `fastio run` does: it must see their processes.
        "shareProcessNamespace": true,
        "containers": containers,
        "volumes": volumes,
    });
    if !pipeline.pull_secrets().is_empty() {
        pod["imagePullSecrets"] = pipeline
            .pull_secrets()
            .iter()
            .map(|s| json!({ "name": s }))
            .collect();
    }
    let labels = json!({ "app.kubernetes.io/name": "fastio", "fastio.dev/pipeline": label(pipeline.name(), 63) });
    let deadline = pipeline.timeout().as_secs_f64().ceil() as u64;
    let mut spec = json!({
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline.max(1),
        "template": { "metadata": { "labels": labels }, "spec": pod },
    });
    let mut config = json!({ "pipeline.yaml": definition });
    if let Some(payloads) = payloads {
        spec["completionMode"] = json!("Indexed");
        spec["completions"] = json!(payloads.len());
        // One failed run must not stop the others, nor retry itself.
        spec["backoffLimitPerIndex"] = json!(0);
        spec.as_object_mut()
            .expect("an object")
            .remove("backoffLimit");
        if let Some(n) = args.parallelism {
            spec["parallelism"] = json!(n);
        }
        config["payloads"] = json!(
            payloads
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>()
        );
    }
    let meta = |name: &str| {
        let mut m = json!({ "name": name, "labels": labels });
        if let Some(ns) = &args.namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    let objects = [
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta(&secret_name),
            "type": "Opaque", "stringData": { SECRET_KEY: token },
        }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&config_name), "data": config }),
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": meta(&job), "spec": spec }),
    ];
    let mut yaml = format!(
        "# Rendered by fastio {} from {}: pipeline {:?}.\n",
        env!("CARGO_PKG_VERSION"),
        pipeline.origin(),
        pipeline.name()
    );
    for object in objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(&object).context("writing YAML")?);
    }
    Ok(yaml)
}

/// An operator's resources: CPU and memory requests, GPUs as the device plugin's resource.
fn resources(op: &Operator) -> Value {
    let r = op.requests();
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = r.cpu {
        requests.insert("cpu".into(), json!(cpu.to_string()));
    }
    let shm = preallocated_bytes(op);
    let memory = r
        .memory_mb
        .map(|mb| mb.saturating_mul(1 << 20))
        .unwrap_or(0)
        .saturating_add(shm);
    if memory > 0 {
        let mib = memory.div_ceil(1 << 20);
        requests.insert("memory".into(), json!(format!("{mib}Mi")));
        // A limit only where the definition gives the operator's own memory: without it
        // fastio knows only the shared part, and a limit would kill a working operator.
        if r.memory_mb.is_some() {
            limits.insert("memory".into(), json!(format!("{mib}Mi")));
        }
    }
    if let Some(gpu) = r.gpu {
        // Extended resources are set as limits (the request follows).
        limits.insert("nvidia.com/gpu".into(), json!(gpu));
    }
    let mut out = json!({});
    if !requests.is_empty() {
        out["requests"] = Value::Object(requests);
    }
    if !limits.is_empty() {
        out["limits"] = Value::Object(limits);
    }
    out
}

/// A volume: its name and its source's fields.
fn with_name(name: &str, mut source: Value) -> Value {
    source["name"] = json!(name);
    source
}
