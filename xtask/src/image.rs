//! `cargo xtask image`: the container images of docs/kubernetes.md, built with podman from
//! `packaging/`, offline (`FROM scratch`, so no registry is needed):
//!
//! - `localhost/fastio:<version>`: the `fastio` command and the shared libraries it links
//!   (found with `ldd`), at their usual paths; what a rendered Pod's sidecar runs;
//! - `localhost/fastio-operator:<version>` (with `--operator`): libfastio.so, the drop-in
//!   libnvclara.so, the C headers and the Python wheel under /opt/fastio, for operator images to
//!   copy from in a multi-stage build;
//! - `localhost/fastio-demo:<version>` (with `--demo`): the demo's operator program,
//!   `fastio-demo-op`, which the demo pipeline's `container` blocks name.
//!
//! podman reads `packaging/containers.conf` (runc, and limits it may set), which machines
//! with cgroups in hybrid mode need.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn image(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let (mut operator, mut demo) = (false, false);
    for arg in args {
        match arg.as_str() {
            "--operator" => operator = true,
            "--demo" => demo = true,
            _ => bail!("usage: cargo xtask image [--operator] [--demo]"),
        }
    }
    check_podman()?;
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "fastio",
            "--bin",
            "fastio",
            "--bin",
            "fastio-demo-op",
        ],
    )?;
    let context = root.join("target/image");
    if context.exists() {
        std::fs::remove_dir_all(&context).context("clearing target/image")?;
    }
    let rootfs = context.join("rootfs");
    let fastio = root.join("target/release/fastio");
    install(&fastio, &rootfs.join("usr/local/bin/fastio"))?;
    for lib in linked_libraries(&fastio)? {
        install(&lib, &rootfs.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    podman_build(
        root,
        "Containerfile",
        &format!("localhost/fastio:{VERSION}"),
        &context,
    )?;
    if demo {
        let program = root.join("target/release/fastio-demo-op");
        let base = context.join("demo");
        install(&program, &base.join("usr/local/bin/fastio-demo-op"))?;
        for lib in linked_libraries(&program)? {
            install(&lib, &base.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
        }
        podman_build(
            root,
            "Containerfile.demo",
            &format!("localhost/fastio-demo:{VERSION}"),
            &context,
        )?;
    }
    if operator {
        let lib = crate::capi::clib(root)?;
        let wheel = crate::python::dist()?;
        let base = context.join("operator");
        install(&lib.join("libfastio.so"), &base.join("lib/libfastio.so"))?;
        std::os::unix::fs::symlink("libfastio.so", base.join("lib/libnvclara.so"))?;
        // clara.h includes the generated clara_cpd.h: the whole folder goes.
        for header in std::fs::read_dir(root.join("crates/fastio-ffi/include"))? {
            let header = header?.path();
            let name = header.file_name().context("a header without a name")?;
            install(&header, &base.join("include").join(name))?;
        }
        let name = wheel.file_name().context("the wheel has no file name")?;
        install(&wheel, &base.join("wheels").join(name))?;
        podman_build(
            root,
            "Containerfile.operator",
            &format!("localhost/fastio-operator:{VERSION}"),
            &context,
        )?;
    }
    Ok(())
}

/// Copies `from` to `to` (following links), making the folders.
fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to.parent().context("a path without a parent")?)?;
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The shared libraries `program` loads, the dynamic loader included, as `ldd` lists them.
fn linked_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or the loader,
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Fails with how to install podman when it is missing.
pub fn check_podman() -> anyhow::Result<()> {
    for (program, arg) in [("podman", "--version"), ("runc", "--version")] {
        let found = Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!(
                "{program} is not installed: container images are built and run with podman \
                 and runc (on Debian or Ubuntu, as root: apt-get install podman runc)"
            );
        }
    }
    Ok(())
}

fn podman_build(root: &Path, file: &str, tag: &str, context: &Path) -> anyhow::Result<()> {
    let status = Command::new("podman")
        .env("CONTAINERS_CONF", root.join("packaging/containers.conf"))
        .args(["build", "--quiet", "-f"])
        .arg(root.join("packaging").join(file))
        .args(["-t", tag])
        .arg(context)
        .status()
        .context("running podman (apt-get install podman runc)")?;
    if !status.success() {
        bail!("podman build of {tag} failed");
    }
    eprintln!("built {tag}");
    Ok(())
}
