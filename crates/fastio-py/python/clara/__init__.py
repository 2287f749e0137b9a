"""Compatibility module for operators written against NVIDIA Clara's Python client.

``from clara import Driver, Payload, Error`` and the Fast I/O classes work unchanged: an
operator written for Clara runs under ``fastio run``. These are fastio's own classes under
Clara's names.
"""

from fastio import (
    Driver,
    Error,
    FastIOAllocation,
    FastIOContext,
    FastIOEntry,
    IOAccess,
    Payload,
    PayloadCollection,
    PayloadEntry,
)

__all__ = [
    "Driver",
    "Error",
    "FastIOAllocation",
    "FastIOContext",
    "FastIOEntry",
    "IOAccess",
    "Payload",
    "PayloadCollection",
    "PayloadEntry",
]
