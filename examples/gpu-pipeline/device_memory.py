"""Device memory of a Fast I/O context, shared between processes and with PyTorch and CuPy
without a copy. Needs an NVIDIA GPU, PyTorch with CUDA and CuPy:

    python3 examples/gpu-pipeline/device_memory.py

This process serves a context, makes a float32 volume on device 0, fills it with PyTorch
(torch.from_dlpack: the same device memory), checks it with CuPy (the CUDA array
interface: the same memory again) and publishes it; a second process gets it by name,
read-only, and sums it with PyTorch on its GPU, zero-copy.
"""

import subprocess
import sys
import textwrap

import fastio

CHILD = textwrap.dedent("""
    import fastio, torch
    ctx = fastio.FastIOContext.from_env()
    a = ctx.get("volume", fastio.IOAccess.ReadOnly)
    a.set_type_and_dimensions("float32", [64, 512, 512])
    t = torch.from_dlpack(a)
    assert t.is_cuda and t.shape == (64, 512, 512), (t.device, t.shape)
    print(f"child: sum {float(t.sum()):.1f} at {t.data_ptr():#x}", flush=True)
    del t
    a.release()
""")


def main():
    try:
        import cupy
        import torch
    except ImportError as e:
        sys.exit(f"this example needs PyTorch with CUDA and CuPy: {e}")
    if not torch.cuda.is_available():
        sys.exit("this example needs an NVIDIA GPU: PyTorch sees no CUDA device")
    with fastio.serve() as server:
        ctx = server.context()
        a = ctx.empty([64, 512, 512], "float32", device=0)
        assert a.__dlpack_device__() == (2, 0)
        view = a.device_view()
        t = torch.from_dlpack(a)
        assert t.is_cuda and t.data_ptr() == view.ptr, (t.data_ptr(), view.ptr)
        t.fill_(0.5)
        torch.cuda.synchronize()
        c = cupy.asarray(a)
        assert c.data.ptr == view.ptr and c.shape == (64, 512, 512)
        expected = 0.5 * c.size
        assert float(c.sum()) == expected
        print(f"parent: {view!r} at {view.ptr:#x}; torch and CuPy share it; sum {expected:.1f}")
        a.publish("volume")
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                               timeout=120)
        print(child.stdout + child.stderr, end="")
        if child.returncode != 0 or f"sum {expected:.1f}" not in child.stdout:
            sys.exit("the second process did not read the same device memory")
        print("device_memory: OK")


if __name__ == "__main__":
    main()
