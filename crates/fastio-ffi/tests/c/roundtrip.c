/* An allocation's round trip in one process: create, type, map for writing, fill, unmap,
 * publish, release; get, read type, dimensions and size, map read-only, check, free.
 * Compiled as C11 and as C++17 (hence the explicit casts). */
#include "check.h"

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));

    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 4 * 3 * 4, &a));
    const size_t dims[2] = {3, 4};
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                          dims, 2));
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    float *grid = (float *)data;
    for (int i = 0; i < 12; i++) grid[i] = (float)i;
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "grid"));
    CHECK_OK(nvidia_clara_fastio__release(a));

    nvidia_clara_fastio_alloc *b = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "grid", &b));
    nvidia_clara_element_type type = -1;
    size_t got_dims[8] = {0};
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(b, &type, got_dims, 8, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32);
    CHECK(count == 2 && got_dims[0] == 3 && got_dims[1] == 4);
    size_t size = 0;
    CHECK_OK(nvidia_clara_fastio__size(b, &size));
    CHECK(size == 48);
    nvidia_clara_fastio_access access = -1;
    CHECK_OK(nvidia_clara_fastio__access(b, &access));
    CHECK(access == NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE);
    void *view = NULL;
    CHECK_OK(nvidia_clara_fastio__map(b, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &view));
    const float *values = (const float *)view;
    for (int i = 0; i < 12; i++) CHECK(values[i] == (float)i);
    CHECK_OK(nvidia_clara_fastio__unmap(b));
    CHECK_OK(nvidia_clara_fastio__free(b));

    nvidia_clara_fastio_alloc *c = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "grid", &c), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "was freed");
    CHECK(c == NULL);
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    puts("roundtrip ok");
    return 0;
}
