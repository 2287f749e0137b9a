"""Calls from several Python threads: the GIL is released for context calls and copies,
and never waited for while a handle's lock is held (no deadlock)."""

import threading

import numpy as np

import fastio


def hammer(calls, seconds_allowed=60):
    errors = []

    def loop(call):
        try:
            for _ in range(300):
                call()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds_allowed)
    assert not any(t.is_alive() for t in threads), "threads are stuck: deadlock"
    assert not errors, errors


def test_threads_sharing_an_allocation_do_not_deadlock(server):
    ctx = fastio.FastIOContext.connect(server.address)
    a = ctx.create(1 << 20)
    a.set_type_and_dimensions(np.uint8, [1 << 20])
    names = iter(range(1 << 30))
    hammer(
        [
            lambda: a.get_bytes(),  # copies with the GIL released
            lambda: a.publish(f"t{next(names)}"),  # a socket round trip, GIL released
            lambda: a.size,  # takes the handle's lock with the GIL held
            lambda: a.shape,
            lambda: a.set_values(b"x" * 1000),
        ]
    )
    assert a.get_bytes()[:1000] == b"x" * 1000
