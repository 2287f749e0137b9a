"""Type stubs of the native module ``fastio._native`` (re-exported by ``fastio`` and ``clara``)."""

import enum
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

CONTEXT_ENV: str
"""The environment variable naming a context (``FASTIO_CONTEXT``)."""

class Error(Exception):
    """Raised by every failing Fast I/O call; the message says what went wrong."""

class NotFoundError(Error):
    """No publication, entry or metadata of that name or kind (C: NOT_FOUND)."""

class AlreadyPublishedError(Error):
    """The name is taken: published already, or freed and not yet withdrawn."""

class ReadOnlyError(Error):
    """Writing was asked of memory this handle or operator may only read (C: READ_ONLY)."""

class BusyError(Error):
    """Another handle holds the write mapping: one writer at a time (C: BUSY)."""

class InvalidHandleError(Error):
    """The handle was released or freed, or was never this client's (C: INVALID_HANDLE)."""

class InvalidArgumentError(Error):
    """A bad name, type, shape or size (C: INVALID_ARGUMENT)."""

class OutOfMemoryError(Error):
    """The machine cannot hold the memory asked for."""

class DeviceError(Error):
    """Device memory could not be made: no CUDA driver, no such device, or the driver refused."""

class JobError(Error):
    """A pipeline job's request failed: not in a job, joined twice, or the job aborted."""

class ContextGoneError(Error):
    """The context cannot be reached: no server, it went away, it timed out, or this process was forked from the one that connected."""

class ExportError(Error, BufferError):
    """Raised when memory cannot be exported as asked (DLPack, CUDA array interface)."""

class IOAccess(enum.Enum):
    """How a handle may touch its memory."""

    ReadOnly = ...
    ReadWrite = ...

ElementTypeLike = str | np.dtype[Any] | type[np.generic]
"""A name (``"float16"``, ``"f16"``; Clara's short names win, so ``"u8"`` is uint8), a
numpy dtype, or a numpy scalar type."""

class View:
    """An export of an allocation's or entry's memory; keeps the mapping alive. It is the
    base object of numpy arrays made from Fast I/O memory and supports the buffer protocol."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class DeviceView:
    """Fast I/O memory on a CUDA device, for torch.from_dlpack / cupy.asarray without a copy."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...
    def __dlpack__(
        self,
        stream: int | Any | None = None,
        *,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    @property
    def ptr(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...

class FastIOAllocation:
    """A handle to a Fast I/O memory resource, with its own local metadata.

    Deleting the last reference releases it. Numpy views share its memory (writable when
    the handle may write) and keep it mapped: ``release()``/``free()`` reach the context
    when the last view is gone."""

    @property
    def size(self) -> int:
        """Size in bytes."""
    @property
    def id(self) -> int:
        """The context's id of the memory resource."""
    @property
    def access(self) -> IOAccess: ...
    @property
    def hugetlb(self) -> bool:
        """True when the memory comes from the machine's hugetlb pool."""
    @property
    def element_type(self) -> np.dtype[Any] | None:
        """Local element type, or None before set_type_and_dimensions."""
    @property
    def shape(self) -> tuple[int, ...] | None:
        """Local dimensions, or None before set_type_and_dimensions."""
    @property
    def dimensions(self) -> tuple[int, ...] | None:
        """Same as shape."""
    @property
    def is_live(self) -> bool:
        """True until release() or free()."""
    def copy_to(self, device: FastIOAllocation) -> None:
        """Copies this host allocation to the start of a device allocation (at least as
        large); returns once done. Registered with CUDA on the first copy (pinned speed)."""
    def copy_from(self, device: FastIOAllocation) -> None:
        """Copies the first ``size`` bytes of a device allocation into this (writable) host
        allocation; returns once done."""
    def set_type_and_dimensions(
        self, element_type: ElementTypeLike, dimensions: Sequence[int]
    ) -> None: ...
    def publish(self, name: str, *, replace: bool = False) -> None:
        """Publishes under ``name`` (``A-Z a-z 0-9 - _ . / :``); a taken or freed name
        raises unless ``replace=True``, which replaces that publication."""
    def publish_with_event(self, name: str, event: bytes | bytearray | memoryview) -> None:
        """Publishes with the producer's 64-byte CUDA IPC event handle."""
    @property
    def cuda_event(self) -> bytes | None:
        """The publication's CUDA IPC event handle (64 bytes), or None."""
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """Device memory only (AttributeError for host memory)."""
    def device_view(self) -> DeviceView: ...
    def release(self) -> None: ...
    def free(self) -> None: ...
    def acquire_write(self) -> None:
        """Takes the write mapping for this handle (one writer at a time, in every process
        of the context); raises ``BusyError`` while another handle holds it,
        ``ReadOnlyError`` on a read-only handle. Given back by ``release_write()`` or when
        the handle goes."""
    def release_write(self) -> None:
        """Gives back one ``acquire_write()`` of this handle."""
    def as_numpy(self) -> npt.NDArray[Any]:
        """Zero-copy view: local type and shape (flat uint8 when untyped)."""
    def get_numpy(self) -> npt.NDArray[Any]:
        """Same as as_numpy()."""
    def get_bytes(self) -> bytes: ...
    def set_values(self, values: npt.ArrayLike | bytes | bytearray | memoryview) -> None: ...
    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    def __dlpack__(
        self,
        stream: int | Any | None = None,
        *,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any:
        """DLPack capsule of the memory (zero-copy unless copy=True; read-only flagged)."""
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __enter__(self) -> FastIOAllocation: ...
    def __exit__(self, *args: object) -> Literal[False]: ...

class FastIOContext:
    """The memory resources shared by the operators of one job.

    ``FastIOContext()`` is private to this process; ``from_env()`` and ``connect()`` join
    a context server (``fastio run``, ``fastio serve``, ``fastio.serve()``)."""

    def __init__(self, pool_bytes: int | None = None) -> None: ...
    @staticmethod
    def from_env() -> FastIOContext: ...
    @staticmethod
    def connect(address: str) -> FastIOContext: ...
    def create(
        self, size: int, *, hugetlb: bool = False, device: int | None = None
    ) -> FastIOAllocation:
        """Zeroed shared memory; ``hugetlb=True`` takes it from the machine's hugetlb pool
        where the pool can hold it, ordinary memory otherwise (see ``.hugetlb``)."""
    def empty(
        self,
        shape: int | Sequence[int],
        dtype: npt.DTypeLike | str,
        *,
        hugetlb: bool = False,
        device: int | None = None,
    ) -> FastIOAllocation:
        """A typed allocation to fill in place (not zeroed); ``hugetlb`` as for ``create``."""
    def get(self, name: str, access: IOAccess = ...) -> FastIOAllocation: ...
    def publish_array(self, array: npt.ArrayLike, name: str, *, replace: bool = False) -> None:
        """Publishes a copy of ``array``; ``replace=True`` replaces a publication (or
        freed name) that has ``name`` instead of raising, e.g. in a notebook cell run twice."""
    def unpublish(self, name: str) -> None:
        """Withdraws ``name`` (live or freed) so that it can be published again; handles
        already got stay valid."""
    def stats(self) -> dict[str, int]: ...

class ContextServer:
    """A context server running in this process."""

    @property
    def address(self) -> str: ...
    def context(self) -> FastIOContext: ...
    def stop(self) -> None: ...
    def __enter__(self) -> ContextServer: ...
    def __exit__(self, *args: object) -> Literal[False]: ...

def serve(pool_bytes: int | None = None, *, export: bool = True) -> ContextServer:
    """Starts a context server in this process. With ``export`` (the default) its address
    goes into ``os.environ["FASTIO_CONTEXT"]``, so child processes started from here on
    join it with ``FastIOContext.from_env()``; ``stop()`` puts the previous value back."""

def cli_main(args: list[str], program_dirs: list[str] = ...) -> int:
    """Runs the ``fastio`` command with ``args`` (the first is the program's name) and
    returns its exit status; the ``fastio`` console script calls it."""

def jobs() -> list[dict[str, Any]]:
    """The running jobs of this user, oldest first (the records `fastio ps` lists)."""

def inspect(job: str | None = None) -> dict[str, Any]:
    """One running job as `fastio ls` shows it: {"job": record, "listing": {...}}; `job` is
    a prefix of its id or its pipeline's name (default: the only running job)."""

class FastIOEntry:
    """A typed shared memory input (read-only) or output (read-write) of this operator.
    Valid during execute only."""

    @property
    def name(self) -> str: ...
    @property
    def is_preallocated(self) -> bool: ...
    @property
    def is_allocated(self) -> bool: ...
    @property
    def access(self) -> IOAccess: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def element_type(self) -> np.dtype[Any]: ...
    @property
    def dynamic_shape_indices(self) -> tuple[int, ...]: ...
    @property
    def is_dynamic(self) -> bool: ...
    @property
    def cuda_event(self) -> bytes | None:
        """The producer's CUDA IPC event handle (64 bytes), or None."""
    @property
    def size_in_bytes(self) -> int | None: ...
    def update_shape(
        self, dimensions: Sequence[int], new_values: Sequence[int]
    ) -> tuple[int, ...]: ...
    def allocate(self) -> None: ...
    def get_bytes(self) -> bytes: ...
    def get_numpy(self) -> npt.NDArray[Any]:
        """Read-only zero-copy view."""
    def as_numpy(self) -> npt.NDArray[Any]:
        """Zero-copy view, writable for outputs."""
    def set_values(self, new_vals: npt.ArrayLike | bytes | bytearray | memoryview) -> None: ...
    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    def __dlpack__(
        self,
        stream: int | Any | None = None,
        *,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any:
        """DLPack capsule of the memory (zero-copy unless copy=True; read-only flagged)."""
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """CUDA array interface v3 of a device entry; AttributeError for host entries."""
    def device_view(self) -> DeviceView:
        """A view of a device entry (ptr, device, shape, dtype, readonly)."""
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class PayloadEntry:
    """A disk input or output: a name and a directory."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...

class PayloadCollection:
    """Entries, by position or by name."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __contains__(self, name: object) -> bool: ...
    def __getitem__(self, key: int | str) -> Any: ...
    def names(self) -> list[str]: ...

class Payload:
    """What execute works with; valid only during the execute handler."""

    @property
    def fastio_context(self) -> FastIOContext: ...
    @property
    def input_entries(self) -> PayloadCollection: ...
    @property
    def output_entries(self) -> PayloadCollection: ...
    @property
    def fastio_input_entries(self) -> PayloadCollection: ...
    @property
    def fastio_output_entries(self) -> PayloadCollection: ...
    def fastio_input(self, name: str) -> FastIOEntry: ...
    def fastio_output(self, name: str) -> FastIOEntry: ...
    def cuda_stream(self) -> int:
        """The operator's CUDA stream (held for the run), ordered after every input's producer."""

class Driver:
    """An operator's link to its job, and the runner of its life-cycle."""

    def __init__(
        self,
        execute_handler: Callable[[Driver, Payload], bool | None] | None = None,
        prepare_handler: Callable[[Driver], bool | None] | None = None,
        cleanup_handler: Callable[[Driver], bool | None] | None = None,
        app_data: Any = None,
    ) -> None: ...
    @property
    def job_id(self) -> uuid.UUID: ...
    @property
    def job_name(self) -> str: ...
    @property
    def stage_name(self) -> str: ...
    @property
    def app_data(self) -> Any: ...
    @property
    def is_standalone(self) -> bool: ...
    @property
    def fastio_context(self) -> FastIOContext: ...
    def start(self) -> None: ...
    def wait_for_completion(self) -> None: ...
