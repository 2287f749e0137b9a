"""Python benchmark of `cargo xtask bench`: hand a numpy array from a producer to a
consumer that reads every element, four ways, in one run:

- fastio: `publish_array` into a context server's memory, `get` (read-only) over the
  server's socket, a zero-copy numpy view, read;
- multiprocessing.shared_memory: create a named segment, copy the array in, attach by
  name, a numpy view over its buffer, read;
- np.save / np.load through /dev/shm (tmpfs);
- np.save / np.load through a file on disk (the repository's target directory; the page
  cache usually holds it, so this is the best case for disk).

Each case is timed end to end (producer and consumer in this process; the consumer's
lookup goes through the same mechanism another process would use) and cleaned up
outside the timing. The table of medians and ratios to fastio is written between the
markers in docs/benchmarks.md.

Usage: bench_fastio.py [--doc docs/benchmarks.md] [--max-mib 1024] [--repeat N]
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

import fastio

START = "<!-- python-bench:start (written by `cargo xtask bench`) -->"
END = "<!-- python-bench:end -->"
MIB = 1 << 20


def timed(setup, body, cleanup, repeat):
    """Seconds of the first run of `body(setup())`, and the median of `repeat` more."""
    times = []
    for _ in range(repeat + 1):
        state = setup()
        t0 = time.perf_counter()
        result = body(state)
        t1 = time.perf_counter()
        cleanup(state, result)
        times.append(t1 - t0)
    return times[0], statistics.median(times[1:])


def fastio_case(ctx, array, tag):
    counter = iter(range(1 << 62))

    def body(_):
        name = f"bench-{tag}-{next(counter)}"  # a name is published once per context
        ctx.publish_array(array, name)  # producer: create, copy in, publish
        a = ctx.get(name, fastio.IOAccess.ReadOnly)  # consumer: get over the socket
        view = a.as_numpy()  # zero-copy
        return a, view, view.max()

    def cleanup(_, result):
        a, view, _ = result
        del view
        a.free()

    return lambda: None, body, cleanup


def shared_memory_case(array):
    def body(_):
        shm = shared_memory.SharedMemory(create=True, size=array.nbytes)
        dst = np.ndarray(array.shape, array.dtype, buffer=shm.buf)
        dst[...] = array  # producer: copy in
        other = shared_memory.SharedMemory(name=shm.name)  # consumer: attach by name
        view = np.ndarray(array.shape, array.dtype, buffer=other.buf)
        return shm, dst, other, view, view.max()

    def cleanup(_, result):
        shm, dst, other, view, _ = result
        del view, dst
        other.close()
        shm.close()
        shm.unlink()

    return lambda: None, body, cleanup


def npsave_case(directory, array):
    path = os.path.join(directory, "fastio-bench.npy")

    def body(_):
        np.save(path, array)
        loaded = np.load(path)
        return loaded.max()

    def cleanup(_, result):
        os.unlink(path)

    return lambda: None, body, cleanup


def seconds(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--max-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=0, help="runs per case (0: by size)")
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[2]
    disk_dir = root / "target"
    disk_dir.mkdir(exist_ok=True)
    sizes = [s for s in (1, 16, 256, 1024) if s <= args.max_mib]
    rows = []
    for mib in sizes:
        # A server per size, as a pipeline that hands over arrays of one size: its warm
        # pool (default 1 GiB) then holds the segments of this size only.
        server = fastio.serve()
        ctx = fastio.FastIOContext.connect(server.address)
        array = np.random.default_rng(mib).random(mib * MIB // 4, dtype=np.float32)
        repeat = args.repeat or (20 if mib <= 16 else 5 if mib <= 256 else 3)
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm_dir, tempfile.TemporaryDirectory(
            dir=disk_dir
        ) as on_disk:
            cases = [
                ("fastio publish_array + get + read", fastio_case(ctx, array, mib)),
                ("multiprocessing.shared_memory + numpy", shared_memory_case(array)),
                ("np.save / np.load, /dev/shm", npsave_case(shm_dir, array)),
                ("np.save / np.load, disk", npsave_case(on_disk, array)),
            ]
            results = [(label, timed(*case, repeat)) for label, case in cases]
        server.stop()
        del ctx
        base = results[0][1][1]
        for label, (first, t) in results:
            gbps = mib * MIB / t / 1e9
            rows.append(
                f"| {mib} MiB | {label} | {seconds(t)} | {gbps:.2f} GB/s | {t / base:.2f}x "
                f"| {seconds(first)} |"
            )
        print(f"{mib} MiB: " + ", ".join(f"{label}: {seconds(t[1])}" for label, t in results), flush=True)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(
        [
            f"Measured {date} on {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, numpy {np.__version__}. Time: producer + consumer "
            "end to end, median of 3 to 20 runs after the first; the ratio is to fastio at the "
            "same size (higher is slower); the first run is shown apart (fastio: a fresh "
            "segment, later runs reuse a warm one).",
            "",
            "| size | how | time | throughput | vs fastio | first run |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(table)
    if args.doc:
        doc = args.doc.read_text()
        if START not in doc or END not in doc:
            doc = doc.rstrip("\n") + f"\n\n{START}\n{END}\n"
        start, end = doc.index(START), doc.index(END)
        args.doc.write_text(doc[:start] + START + "\n" + table + doc[end:])
        print(f"(written to {args.doc})")


if __name__ == "__main__":
    sys.exit(main())
