"""Shared fixtures: a private context, and a context server other processes can join."""

import os
import subprocess
import sys
import textwrap

import pytest

import fastio


@pytest.fixture
def ctx():
    """A private in-process context."""
    return fastio.FastIOContext()


@pytest.fixture
def server():
    """A context server in this process (as `fastio serve` runs one)."""
    with fastio.serve() as s:
        yield s


def spawn(script, address, **popen):
    """Starts a second Python process running `script`, joined to the context at
    `address` through FASTIO_CONTEXT, talking over stdin/stdout lines."""
    env = dict(os.environ, FASTIO_CONTEXT=address)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def open_fds():
    """Number of open descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))
