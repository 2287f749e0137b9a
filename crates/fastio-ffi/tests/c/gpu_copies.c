/* Host <-> device copies through the C API on a real GPU: the bytes really move.
 *
 * The program loads the CUDA driver itself (dlopen) only to make its own stream and to
 * check the device's bytes independently of fastio (cuMemcpyDtoH from the device pointer).
 * Through an in-process context it makes a host allocation and one on cuda:0, copies host
 * to device and back on its own stream, on CU_STREAM_LEGACY and on CU_STREAM_PER_THREAD,
 * checks every byte each time, copies on a stream of the second GPU where the machine has
 * two (through its peer mapping), and prints the copy rate (informative only). Exit 0 and "gpu copies ok" when every check
 * passes; exit 2 and "no CUDA" on a machine without a driver or a device. */
#include <dlfcn.h>
#include <stdint.h>
#include <time.h>

#include "check.h"

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;

static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDeviceGetCount)(int *);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuStreamCreate)(CUstream *, unsigned);
static CUresult (*p_cuStreamSynchronize)(CUstream);
static CUresult (*p_cuStreamDestroy)(CUstream);
static CUresult (*p_cuMemcpyDtoH)(void *, uint64_t, size_t);

#define CU(call)                                                                        \
    do {                                                                                \
        CUresult cu_r_ = (call);                                                        \
        if (cu_r_ != 0) {                                                               \
            fprintf(stderr, "%s:%d: %s failed: CUresult %d\n", __FILE__, __LINE__, #call, \
                    cu_r_);                                                             \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static void *sym(void *lib, const char *name) {
    void *f = dlsym(lib, name);
    if (f == NULL) {
        fprintf(stderr, "libcuda lacks %s\n", name);
        exit(1);
    }
    return f;
}

static int load_cuda(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == NULL) return 0;
    *(void **)&p_cuInit = sym(lib, "cuInit");
    *(void **)&p_cuDeviceGetCount = sym(lib, "cuDeviceGetCount");
    *(void **)&p_cuDeviceGet = sym(lib, "cuDeviceGet");
    *(void **)&p_cuDevicePrimaryCtxRetain = sym(lib, "cuDevicePrimaryCtxRetain");
    *(void **)&p_cuCtxSetCurrent = sym(lib, "cuCtxSetCurrent");
    *(void **)&p_cuCtxSynchronize = sym(lib, "cuCtxSynchronize");
    *(void **)&p_cuStreamCreate = sym(lib, "cuStreamCreate");
    *(void **)&p_cuStreamSynchronize = sym(lib, "cuStreamSynchronize");
    *(void **)&p_cuStreamDestroy = sym(lib, "cuStreamDestroy_v2");
    *(void **)&p_cuMemcpyDtoH = sym(lib, "cuMemcpyDtoH_v2");
    return p_cuInit(0) == 0;
}

/* The primary contexts of the first two GPUs, once retained. */
static CUcontext primary[2];

/* A non-blocking stream of `ordinal`'s primary context, made current on this thread. */
static CUstream stream_on(int ordinal) {
    CUdevice dev;
    CUcontext ctx;
    CUstream s;
    CU(p_cuDeviceGet(&dev, ordinal));
    CU(p_cuDevicePrimaryCtxRetain(&ctx, dev));
    primary[ordinal] = ctx;
    CU(p_cuCtxSetCurrent(ctx));
    CU(p_cuStreamCreate(&s, 1 /* CU_STREAM_NON_BLOCKING */));
    return s;
}

static unsigned char pattern(size_t i, unsigned seed) { return (unsigned char)(i * 7 + seed); }

static void fill(nvidia_clara_fastio_alloc *a, size_t n, unsigned seed) {
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    for (size_t i = 0; i < n; i++) ((unsigned char *)data)[i] = pattern(i, seed);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
}

static void check_bytes(const unsigned char *bytes, size_t n, unsigned seed, const char *what) {
    for (size_t i = 0; i < n; i++) {
        if (bytes[i] != pattern(i, seed)) {
            fprintf(stderr, "%s: byte %zu is %u, expected %u\n", what, i, bytes[i],
                    pattern(i, seed));
            exit(1);
        }
    }
    printf("  %s: %zu bytes right\n", what, n);
}

/* The device's bytes, read with the driver directly. */
static void check_device(nvidia_clara_fastio_alloc *dev, unsigned char *scratch, size_t n,
                         unsigned seed, const char *what) {
    uint64_t ptr = 0;
    int32_t ordinal = -1;
    CHECK_OK(nvidia_clara_fastio__device_pointer(dev, &ptr, &ordinal));
    CHECK(ordinal == 0 && ptr != 0);
    /* The pointer is the mapping on cuda:0: read it from cuda:0's context. */
    CU(p_cuCtxSetCurrent(primary[0]));
    memset(scratch, 0, n);
    CU(p_cuMemcpyDtoH(scratch, ptr, n));
    check_bytes(scratch, n, seed, what);
}

static void check_host(nvidia_clara_fastio_alloc *a, size_t n, unsigned seed, const char *what) {
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    check_bytes(data, n, seed, what);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void) {
    int count = 0;
    if (!load_cuda() || p_cuDeviceGetCount(&count) != 0 || count < 1) {
        printf("no CUDA driver or device here: this program needs an NVIDIA GPU\n");
        return 2;
    }
    const size_t n = 64u << 20;
    unsigned char *scratch = malloc(n);
    CHECK(scratch != NULL);
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    nvidia_clara_fastio_alloc *host = NULL, *back = NULL, *dev = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, n, &host));
    CHECK_OK(nvidia_clara_fastio__create(ctx, n, &back));
    CHECK_OK(nvidia_clara_fastio__create_on_device(ctx, n, 0, &dev));
    CUstream mine = stream_on(0);

    /* The caller's own stream. */
    fill(host, n, 3);
    CHECK_OK(nvidia_clara_fastio__copy_to_device(host, dev, mine));
    CU(p_cuStreamSynchronize(mine));
    check_device(dev, scratch, n, 3, "to device on the caller's stream");
    CHECK_OK(nvidia_clara_fastio__copy_from_device(back, dev, mine));
    CU(p_cuStreamSynchronize(mine));
    check_host(back, n, 3, "back to host on the caller's stream");

    /* The default streams. */
    fill(host, n, 11);
    CHECK_OK(nvidia_clara_fastio__copy_to_device(host, dev, (void *)1));
    CU(p_cuCtxSynchronize());
    check_device(dev, scratch, n, 11, "to device on CU_STREAM_LEGACY");
    CHECK_OK(nvidia_clara_fastio__copy_from_device(back, dev, (void *)2));
    CU(p_cuCtxSynchronize());
    check_host(back, n, 11, "back to host on CU_STREAM_PER_THREAD");

    /* A stream of the other GPU copies through that GPU's peer mapping of the memory. */
    if (count >= 2) {
        CUstream other = stream_on(1);
        fill(host, n, 23);
        CHECK_OK(nvidia_clara_fastio__copy_to_device(host, dev, other));
        CU(p_cuStreamSynchronize(other));
        check_device(dev, scratch, n, 23, "to cuda:0 memory on a stream of cuda:1 (peer)");
        fill(host, n, 0);
        CHECK_OK(nvidia_clara_fastio__copy_from_device(back, dev, other));
        CU(p_cuStreamSynchronize(other));
        check_host(back, n, 23, "back to host on a stream of cuda:1 (peer)");
        CU(p_cuStreamDestroy(other));
        stream_on(0); /* cuda:0 current again */
    }

    /* Informative: the copy rate of registered Fast I/O memory (5 round trips). */
    double t0 = now();
    for (int i = 0; i < 5; i++) CHECK_OK(nvidia_clara_fastio__copy_to_device(host, dev, mine));
    CU(p_cuStreamSynchronize(mine));
    double t1 = now();
    for (int i = 0; i < 5; i++) CHECK_OK(nvidia_clara_fastio__copy_from_device(back, dev, mine));
    CU(p_cuStreamSynchronize(mine));
    double t2 = now();
    printf("  64 MiB copies: host->device %.1f GB/s, device->host %.1f GB/s\n",
           5.0 * (double)n / (t1 - t0) / 1e9, 5.0 * (double)n / (t2 - t1) / 1e9);

    /* Release waits for the copies queued on the caller's stream; then the stream may go. */
    CHECK_OK(nvidia_clara_fastio__release(dev));
    CHECK_OK(nvidia_clara_fastio__release(back));
    CHECK_OK(nvidia_clara_fastio__release(host));
    CU(p_cuStreamDestroy(mine));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    free(scratch);
    printf("gpu copies ok\n");
    return 0;
}
