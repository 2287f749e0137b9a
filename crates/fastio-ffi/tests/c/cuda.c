/* The GPU side of the C API on a machine without a CUDA device. Roles (argv[1]):
 *   device:    through FASTIO_CONTEXT, gets "host-mem" (host memory) and "on-device" (device
 *              memory on cuda:0, made by the test's server); the device pointer of host memory
 *              is refused as such, that of device memory fails for want of CUDA, nothing is
 *              written on failure, and device memory has no host mapping. Copies between
 *              host and device memory refuse the same handle twice, the wrong kinds, a
 *              device smaller than the host, read-only destinations and a NULL stream,
 *              and fail for want of CUDA once the arguments are right. Device memory
 *              made from C is refused on a device the server lacks.
 *   events:    through FASTIO_CONTEXT, gets "with-event" (published by the test with an
 *              event handle whose byte i is 3*i+1) and "plain" (published without one);
 *              reads the handle, or that there is none; NULL outputs are refused.
 *   operator:  a standalone operator whose execute reads its input's event (none: nothing
 *              produced it) and asks for its CUDA stream, which fails with a message.
 *   dynamic:   a standalone operator whose output "logits" is dynamic and declared on cuda:0:
 *              setting its shape asks the context for device memory, which fails for want of
 *              CUDA, naming the entry; the entry stays unallocated. */
#include "check.h"

static int events(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__connect(NULL, &ctx));
    nvidia_clara_fastio_alloc *a = NULL, *b = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "with-event", &a));
    CHECK_OK(nvidia_clara_fastio__get(ctx, "plain", &b));
    nvidia_clara_fastio_cuda_event event;
    memset(&event, 0, sizeof event);
    int has = -1;
    CHECK(sizeof event == 64);
    CHECK_OK(nvidia_clara_fastio__cuda_event(a, &event, &has));
    CHECK(has == 1);
    for (int i = 0; i < 64; i++) CHECK((unsigned char)event.reserved[i] == (unsigned char)(3 * i + 1));
    nvidia_clara_fastio_cuda_event untouched;
    memset(&untouched, 0xAB, sizeof untouched);
    CHECK_OK(nvidia_clara_fastio__cuda_event(b, &untouched, &has));
    CHECK(has == 0);
    for (int i = 0; i < 64; i++) CHECK((unsigned char)untouched.reserved[i] == 0xAB);
    CHECK_FAILS(nvidia_clara_fastio__cuda_event(a, NULL, &has),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "event_out");
    CHECK_FAILS(nvidia_clara_fastio__cuda_event(a, &event, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "has_event_out");
    CHECK_OK(nvidia_clara_fastio__release(a));
    CHECK_FAILS(nvidia_clara_fastio__cuda_event(a, &event, &has),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "");
    CHECK_OK(nvidia_clara_fastio__release(b));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

static int device(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__connect(NULL, &ctx));
    nvidia_clara_fastio_alloc *host = NULL, *dev = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "host-mem", &host));
    CHECK_OK(nvidia_clara_fastio__get(ctx, "on-device", &dev));
    uint64_t ptr = 77;
    int32_t ordinal = -7;
    CHECK_FAILS(nvidia_clara_fastio__device_pointer(host, &ptr, &ordinal),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "host memory has no device pointer: map it with nvidia_clara_fastio__map");
    CHECK(ptr == 77 && ordinal == -7);
    CHECK_FAILS(nvidia_clara_fastio__device_pointer(dev, &ptr, &ordinal),
                NVIDIA_CLARA_RESULT_FAILED, "cuda:0 memory needs CUDA: no CUDA device");
    CHECK(ptr == 77 && ordinal == -7);
    CHECK_FAILS(nvidia_clara_fastio__device_pointer(dev, NULL, &ordinal),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "ptr_out");
    CHECK_FAILS(nvidia_clara_fastio__device_pointer(dev, &ptr, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "device_out");
    void *data = (void *)1;
    CHECK_FAILS(nvidia_clara_fastio__map(dev, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "no host address");
    CHECK(data == (void *)1);

    void *legacy = (void *)1; /* CU_STREAM_LEGACY */
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, host, legacy),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`host` and `device` are the same handle");
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(dev, host, legacy),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`host`: this allocation is cuda:0 memory");
    nvidia_clara_fastio_alloc *big = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 8192, &big));
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, big, legacy),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`device`: this allocation is host memory");
    CHECK_FAILS(nvidia_clara_fastio__copy_from_device(big, dev, legacy),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`device` is smaller than `host`: expected 8192 bytes, got 4096");
    nvidia_clara_fastio_alloc *ro_dev = NULL, *ro_host = NULL;
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, "on-device",
                                                  NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &ro_dev));
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, "host-mem",
                                                  NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &ro_host));
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, ro_dev, legacy),
                NVIDIA_CLARA_RESULT_READ_ONLY, "`device` (the destination): this handle is read-only");
    CHECK_FAILS(nvidia_clara_fastio__copy_from_device(ro_host, dev, legacy),
                NVIDIA_CLARA_RESULT_READ_ONLY, "`host` (the destination): this handle is read-only");
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, dev, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`stream` is NULL");
    /* Right arguments (a read-only device handle may be a source): no CUDA here. */
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(ro_host, dev, legacy),
                NVIDIA_CLARA_RESULT_FAILED, "cuda:0 memory needs CUDA: no CUDA device");
    CHECK_FAILS(nvidia_clara_fastio__copy_from_device(host, ro_dev, legacy),
                NVIDIA_CLARA_RESULT_FAILED, "cuda:0 memory needs CUDA: no CUDA device");
    /* Device memory made from C (the test's server makes it on its CPU fake). */
    nvidia_clara_fastio_alloc *made = NULL;
    CHECK_FAILS(nvidia_clara_fastio__create_on_device(ctx, 4096, 5, &made),
                NVIDIA_CLARA_RESULT_FAILED, "cannot make cuda:5 memory");
    CHECK(made == NULL);
    CHECK_FAILS(nvidia_clara_fastio__create_on_device(ctx, 4096, 0, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "alloc_out");
    CHECK_OK(nvidia_clara_fastio__create_on_device(ctx, 4096, 0, &made));
    CHECK_FAILS(nvidia_clara_fastio__map(made, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "no host address");
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, made, legacy),
                NVIDIA_CLARA_RESULT_FAILED, "cuda:0 memory needs CUDA: no CUDA device");
    CHECK_OK(nvidia_clara_fastio__release(made));
    CHECK_OK(nvidia_clara_fastio__release(ro_dev));
    CHECK_OK(nvidia_clara_fastio__release(ro_host));
    CHECK_OK(nvidia_clara_fastio__release(big));
    CHECK_OK(nvidia_clara_fastio__release(dev));
    CHECK_FAILS(nvidia_clara_fastio__copy_to_device(host, dev, legacy),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "");
    CHECK_FAILS(nvidia_clara_fastio__device_pointer(dev, &ptr, &ordinal),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "");
    CHECK_OK(nvidia_clara_fastio__release(host));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

static void notify(nvidia_clara_cpd *cpd, int code, const char *message) {
    (void)cpd;
    fprintf(stderr, "notification %d: %s\n", code, message);
}

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    nvidia_clara_fastio_entry **inputs = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_input_entries(payload, &inputs));
    CHECK(inputs[0] != NULL);
    nvidia_clara_fastio_cuda_event event;
    int has = -1;
    CHECK_OK(nvidia_clara_fastio_entry__cuda_event(inputs[0], &event, &has));
    CHECK(has == 0);
    void *stream = (void *)1;
    CHECK_FAILS(nvidia_clara_payload__cuda_stream(payload, &stream), NVIDIA_CLARA_RESULT_FAILED,
                "reaching CUDA: no CUDA device");
    CHECK(stream == (void *)1);
    CHECK_FAILS(nvidia_clara_payload__cuda_stream(payload, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "stream_out");
    return 0;
}

static result execute_dynamic(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    nvidia_clara_fastio_entry **outputs = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_output_entries(payload, &outputs));
    CHECK(outputs[0] != NULL);
    int allocated = -1;
    CHECK_OK(nvidia_clara_fastio_entry__is_allocated(outputs[0], &allocated));
    CHECK(allocated == 0);
    const size_t index0[1] = {0};
    const int64_t three[1] = {3};
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(outputs[0], index0, three, 1),
                NVIDIA_CLARA_RESULT_FAILED, "FastIO entry \"logits\" cannot be allocated on cuda:0");
    CHECK(strstr(nvidia_clara_last_error_message(), "no CUDA device") != NULL);
    CHECK_OK(nvidia_clara_fastio_entry__is_allocated(outputs[0], &allocated));
    CHECK(allocated == 0);
    return 0;
}

static int op(int dynamic) {
    nvidia_clara_cpd *cpd = NULL;
    CHECK_OK(nvidia_clara_cpd__create(notify, NULL, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, NULL, dynamic ? execute_dynamic : execute, NULL));
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd));
    CHECK_OK(nvidia_clara_cpd__release(cpd));
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    int r = strcmp(argv[1], "events") == 0   ? events()
            : strcmp(argv[1], "device") == 0 ? device()
                                             : op(strcmp(argv[1], "dynamic") == 0);
    printf("%s ok\n", argv[1]);
    return r;
}
