"""fastio: zero-copy shared-memory arrays between the processes of a pipeline job.

A reimplementation of NVIDIA Clara's Fast I/O. Create an allocation, type it, publish it
by name; any process of the job gets it by name and maps the same memory::

    import numpy as np, fastio
    ctx = fastio.FastIOContext()              # or FastIOContext.from_env() in a job
    ctx.publish_array(np.arange(12, dtype=np.float16).reshape(3, 4), "h")
    a = ctx.get("h", fastio.IOAccess.ReadOnly)
    view = a.as_numpy()                       # zero-copy, read-only
    assert view.dtype == np.float16 and view.shape == (3, 4)

An operator of a pipeline run by ``fastio run`` uses Clara's classes (also importable as
``from clara import Driver, Payload, Error``)::

    def execute(driver, payload):
        volume = payload.fastio_input_entries["volume"].get_numpy()   # read-only, zero-copy
        mask = payload.fastio_output_entries["mask"].as_numpy()      # writable, zero-copy
        np.greater(volume, 300, out=mask, casting="unsafe")

    driver = fastio.Driver(execute_handler=execute)
    driver.start()
    driver.wait_for_completion()

Allocations and entries also speak DLPack: ``numpy.from_dlpack(a)`` or
``torch.from_dlpack(a)`` share the memory without a copy (read-only where the holder may
not write).

``fastio.jobs()`` lists the running jobs of this user and ``fastio.inspect(job)`` one job's
operators, entries and publications with sizes and holders (as ``fastio ps`` / ``fastio ls``).

Every failure raises :class:`fastio.Error` with a message saying what went wrong, or one of
its subclasses that says which kind of failure it was: ``NotFoundError``,
``AlreadyPublishedError``, ``ReadOnlyError``, ``BusyError``, ``InvalidHandleError``,
``InvalidArgumentError``, ``OutOfMemoryError``, ``DeviceError``, ``JobError``,
``ContextGoneError`` (and :class:`fastio.ExportError`, also a ``BufferError``, when memory
cannot be exported as asked).
"""

from fastio._native import (
    CONTEXT_ENV,
    AlreadyPublishedError,
    BusyError,
    ContextGoneError,
    ContextServer,
    DeviceError,
    DeviceView,
    Driver,
    Error,
    ExportError,
    FastIOAllocation,
    FastIOContext,
    FastIOEntry,
    IOAccess,
    InvalidArgumentError,
    InvalidHandleError,
    JobError,
    NotFoundError,
    OutOfMemoryError,
    Payload,
    PayloadCollection,
    PayloadEntry,
    ReadOnlyError,
    View,
    inspect,
    jobs,
    serve,
)

__all__ = [
    "CONTEXT_ENV",
    "AlreadyPublishedError",
    "BusyError",
    "ContextGoneError",
    "ContextServer",
    "DeviceError",
    "DeviceView",
    "Driver",
    "Error",
    "ExportError",
    "FastIOAllocation",
    "FastIOContext",
    "FastIOEntry",
    "IOAccess",
    "InvalidArgumentError",
    "InvalidHandleError",
    "JobError",
    "NotFoundError",
    "OutOfMemoryError",
    "Payload",
    "PayloadCollection",
    "PayloadEntry",
    "ReadOnlyError",
    "View",
    "inspect",
    "jobs",
    "serve",
]
