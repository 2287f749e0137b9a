"""The synthetic volume both steps of dynamic.yaml compute on their GPU (the same formula
in PyTorch and in CuPy): 64 slices of 256 x 256 values in 0..999."""

SHAPE = (64, 256, 256)


def volume(xp, device=None):
    """The volume as an int32 array of the array library `xp` (torch or cupy)."""
    kw = {"device": device} if device is not None else {}
    z = xp.arange(SHAPE[0], dtype=xp.int32, **kw).reshape(-1, 1, 1)
    y = xp.arange(SHAPE[1], dtype=xp.int32, **kw).reshape(1, -1, 1)
    x = xp.arange(SHAPE[2], dtype=xp.int32, **kw).reshape(1, 1, -1)
    return (x * 7 + y * 13 + z * 31 + x * y) % 1000
