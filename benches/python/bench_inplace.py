"""Python handover benchmark of `cargo xtask bench`: a producer fills an array, another
process reads every element, steady state (the same two processes, several rounds), with
the floor measured in the same run:

- floor: numpy copy into an already-touched array + a full read (sum) of a touched array;
- fastio in place: `ctx.empty(shape, dtype)`, fill its `as_numpy()`, `publish`; the
  consumer `get`s read-only and sums a zero-copy view; the producer frees (after warm-up
  rounds that let the background collapser make the segment huge, at most 40);
- multiprocessing.shared_memory, one segment created once and reused (the best case for it);
- np.save / np.load through a file in the page cache (under target/).

Writes target/fastio-bench/python.json (medians in ms); `cargo xtask bench` renders it.

Usage: bench_inplace.py [--max-mib 1024] [--rounds 5]
       bench_inplace.py --consumer ADDRESS   (the consumer role, driven over stdin/stdout)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

import fastio

MIB = 1 << 20


def consumer(address):
    ctx = fastio.FastIOContext.connect(address)
    attached = {}
    for line in sys.stdin:
        words = line.split()
        if words[0] == "fastio":
            a = ctx.get(words[1], fastio.IOAccess.ReadOnly)
            v = a.as_numpy()
            s = int(v.view(np.uint64).sum())
            del v
            a.release()
        elif words[0] == "shm":
            name, nbytes = words[1], int(words[2])
            if name not in attached:
                seg = shared_memory.SharedMemory(name=name)
                # Before Python 3.13 an attaching process registers the segment with its
                # own resource tracker, which unlinks it (and warns) at exit: the producer
                # owns it, so the consumer lets go of that registration.
                resource_tracker.unregister(seg._name, "shared_memory")
                attached[name] = (seg, np.ndarray(nbytes // 8, np.uint64, buffer=seg.buf))
            s = int(attached[name][1].sum())
        elif words[0] == "npload":
            s = int(np.load(words[1]).view(np.uint64).sum())
        elif words[0] == "quit":
            break
        print(s, flush=True)
    for seg, view in attached.values():
        del view
        seg.close()


class Consumer:
    def __init__(self, address):
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--consumer", address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline()

    def stop(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        self.p.wait(timeout=30)


def median_ms(f, rounds, warmup=1):
    times = []
    for i in range(rounds + warmup):
        t = time.perf_counter()
        f()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--consumer")
    parser.add_argument("--max-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.consumer:
        return consumer(args.consumer)
    root = Path(__file__).resolve().parents[2]
    out_dir = root / "target" / "fastio-bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    server = fastio.serve(pool_bytes=2 << 30)
    ctx = fastio.FastIOContext.connect(server.address)
    reader = Consumer(server.address)
    rows = []
    for mib in [m for m in (16, 256, 1024) if m <= args.max_mib]:
        n = mib * MIB // 4
        src = np.random.default_rng(mib).random(n, dtype=np.float32)
        touched = np.empty_like(src)
        touched[...] = 1
        copy = median_ms(lambda: np.copyto(touched, src), args.rounds)
        read = median_ms(lambda: touched.view(np.uint64).sum(), args.rounds)
        del touched
        counter = iter(range(1 << 62))

        def fastio_round():
            name = f"py-{mib}-{next(counter)}"
            a = ctx.empty(n, np.float32)
            v = a.as_numpy()
            np.copyto(v, src)
            del v
            a.publish(name)
            reader.call(f"fastio {name}")
            a.free()

        # Warm-up until the background collapser has made the segment huge (at most 40).
        warmup = 0
        huge_before = ctx.stats()["huge_page_bytes"]
        while warmup < 40 and ctx.stats()["huge_page_bytes"] - huge_before < src.nbytes * 9 // 10:
            fastio_round()
            time.sleep(0.05)
            warmup += 1
        in_place = median_ms(fastio_round, args.rounds)

        seg = shared_memory.SharedMemory(create=True, size=src.nbytes)
        dst = np.ndarray(src.shape, src.dtype, buffer=seg.buf)

        def shm_round():
            np.copyto(dst, src)
            reader.call(f"shm {seg.name} {src.nbytes}")

        shm = median_ms(shm_round, args.rounds)
        del dst
        seg.close()
        seg.unlink()

        path = out_dir / f"py-handover-{os.getpid()}.npy"

        def npsave_round():
            np.save(path, src)
            reader.call(f"npload {path}")

        npsave = median_ms(npsave_round, args.rounds)
        path.unlink()
        row = {
            "bytes": mib * MIB,
            "floor_copy_ms": copy,
            "floor_read_ms": read,
            "fastio_in_place_ms": in_place,
            "shared_memory_reused_ms": shm,
            "npsave_npload_page_cache_ms": npsave,
            "warmup_rounds": warmup,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    reader.stop()
    server.stop()
    (out_dir / "python.json").write_text(json.dumps({"rows": rows}, indent=2))
    print(f"written to {out_dir / 'python.json'}")


if __name__ == "__main__":
    sys.exit(main())
