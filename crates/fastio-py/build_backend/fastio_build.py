"""The PEP 517 build backend of ``pip install ./crates/fastio-py``: maturin's, after a
check that Rust is there.

Without this check a machine without Rust gets maturin's attempt to download a toolchain
into a temporary directory, or an error about ``cargo metadata``; here it gets a message
saying what is missing and the two ways on (install Rust, or install the prebuilt wheel).
"""

import os
import re
import shutil
import subprocess
import sys

import maturin

# The workspace's rust-version (Cargo.toml), which rust-toolchain.toml pins.
RUST_VERSION = (1, 95)

_HOW = (
    "fastio's Python package is built from Rust source: install Rust {need} or newer "
    "(https://rustup.rs: `curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh`, "
    "then open a new shell), or install a prebuilt wheel instead "
    "(`cargo xtask dist` on a machine with Rust writes one into dist/; "
    "`pip install dist/fastio-*.whl` needs no Rust)."
)


class RustMissing(RuntimeError):
    """Building from source needs a Rust toolchain that is not there."""


def check_rust():
    """Raises RustMissing, saying what is missing, unless cargo of a recent enough Rust
    is on PATH."""
    need = ".".join(map(str, RUST_VERSION))
    cargo = shutil.which("cargo")
    if cargo is None:
        raise RustMissing("cargo was not found on PATH. " + _HOW.format(need=need))
    try:
        out = subprocess.run(
            [cargo, "--version"], capture_output=True, text=True, timeout=600, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RustMissing(f"`{cargo} --version` failed ({e}). " + _HOW.format(need=need)) from e
    found = re.match(r"cargo (\d+)\.(\d+)", out)
    if found is None:
        return  # an unknown format: let the build say more
    if tuple(map(int, found.groups())) < RUST_VERSION:
        raise RustMissing(
            f"{cargo} is Rust {found.group(1)}.{found.group(2)}, older than {need}. "
            + _HOW.format(need=need)
        )


def _checked(hook):
    def run(*args, **kwargs):
        try:
            check_rust()
        except RustMissing as e:
            sys.stderr.write(f"\nerror: {e}\n\n")
            raise SystemExit(1) from None
        return hook(*args, **kwargs)

    run.__name__ = hook.__name__
    run.__doc__ = hook.__doc__
    return run


def _without_rust_download(hook):
    # maturin asks for a helper that downloads Rust when cargo is missing; the check
    # above stops such a build with a clear message instead, so it is not needed.
    def run(*args, **kwargs):
        return [r for r in hook(*args, **kwargs) if r != "puccinialin"]

    run.__name__ = hook.__name__
    return run


get_requires_for_build_wheel = _without_rust_download(maturin.get_requires_for_build_wheel)
get_requires_for_build_sdist = _without_rust_download(maturin.get_requires_for_build_sdist)
get_requires_for_build_editable = _without_rust_download(maturin.get_requires_for_build_editable)
build_wheel = _checked(maturin.build_wheel)
build_sdist = _checked(maturin.build_sdist)
build_editable = _checked(maturin.build_editable)
prepare_metadata_for_build_wheel = _checked(maturin.prepare_metadata_for_build_wheel)
