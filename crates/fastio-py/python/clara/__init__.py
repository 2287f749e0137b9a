"""Compatibility module for operators written against NVIDIA Clara's Python client.

``from clara import FastIOContext, FastIOAllocation, IOAccess, Error`` gives fastio's
classes under Clara's names. ``Driver`` and ``Payload`` come with fastio's pipeline driver.
"""

from fastio import Error, FastIOAllocation, FastIOContext, IOAccess

__all__ = ["Error", "FastIOAllocation", "FastIOContext", "IOAccess"]
