/* Arrays with a zero dimension are valid (numpy's semantics): an allocation of 0 bytes,
 * typed float32[0, 4], published, got, mapped and read back. Compiled as C11. */
#include "check.h"

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));

    const size_t dims[2] = {0, 4};
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, dims[0] * dims[1] * sizeof(float), &a));
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                          dims, 2));
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    CHECK(data != NULL); /* a valid pointer to no bytes */
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "no-lesion"));
    CHECK_OK(nvidia_clara_fastio__release(a));

    nvidia_clara_fastio_alloc *b = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "no-lesion", &b));
    nvidia_clara_element_type type = -1;
    size_t got[4] = {9, 9, 9, 9};
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(b, &type, got, 4, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32 && count == 2 && got[0] == 0 && got[1] == 4);
    size_t size = 99;
    CHECK_OK(nvidia_clara_fastio__size(b, &size));
    CHECK(size == 0);
    CHECK_OK(nvidia_clara_fastio__map(b, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    CHECK(data != NULL);
    CHECK_OK(nvidia_clara_fastio__unmap(b));
    /* A shape needing more bytes than the allocation is still refused. */
    const size_t one[2] = {1, 4};
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(b, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                             one, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "bytes");
    CHECK_OK(nvidia_clara_fastio__free(b));

    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    puts("empty ok");
    return 0;
}
