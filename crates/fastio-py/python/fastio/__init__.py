"""fastio: zero-copy shared-memory arrays between the processes of a pipeline job.

A reimplementation of NVIDIA Clara's Fast I/O. Create an allocation, type it, publish it
by name; any process of the job gets it by name and maps the same memory::

    import numpy as np, fastio
    ctx = fastio.FastIOContext()              # or FastIOContext.from_env() in a job
    ctx.publish_array(np.arange(12, dtype=np.float16).reshape(3, 4), "h")
    a = ctx.get("h", fastio.IOAccess.ReadOnly)
    view = a.as_numpy()                       # zero-copy, read-only
    assert view.dtype == np.float16 and view.shape == (3, 4)

Every failure raises :class:`fastio.Error` with a message saying what went wrong.
"""

from fastio._native import (
    CONTEXT_ENV,
    ContextServer,
    Error,
    FastIOAllocation,
    FastIOContext,
    IOAccess,
    View,
    serve,
)

__all__ = [
    "CONTEXT_ENV",
    "ContextServer",
    "Error",
    "FastIOAllocation",
    "FastIOContext",
    "IOAccess",
    "View",
    "serve",
]
