/* Create, publish, get and free across processes, through the context server named by
 * FASTIO_CONTEXT. Roles (argv[1]), each run as its own process, in this order:
 *   produce:    create 3x4 float32, fill 0..11, publish "grid", release.
 *   consume:    get "grid" twice; check type, dimensions, size, values; map one handle,
 *               free the other; the mapping stays readable until it is released.
 *   after-free: get "grid" fails ("was freed"), get "nope" fails; outputs unchanged.
 * Clara's writer exclusivity across processes, on a published "shared":
 *   hold-writer:  maps it for writing, prints MAPPED, then waits on stdin (killed there);
 *   second-busy:  a write map fails (BUSY, "one writer at a time"); a read map works;
 *   second-ok:    a write map works. */
#include "check.h"

static nvidia_clara_fastio_context *join(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__connect(NULL, &ctx)); /* reads FASTIO_CONTEXT */
    return ctx;
}

static int produce(void) {
    nvidia_clara_fastio_context *ctx = join();
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 4 * 3 * 4, &a));
    const size_t dims[2] = {3, 4};
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                          dims, 2));
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    for (int i = 0; i < 12; i++) ((float *)data)[i] = (float)i;
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "grid"));
    CHECK_OK(nvidia_clara_fastio__release(a));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

static int consume(void) {
    nvidia_clara_fastio_context *ctx = join();
    nvidia_clara_fastio_alloc *b1 = NULL, *b2 = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "grid", &b1));
    CHECK_OK(nvidia_clara_fastio__get(ctx, "grid", &b2));
    nvidia_clara_element_type type = -1;
    size_t dims[4] = {0};
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(b1, &type, dims, 4, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32 && count == 2 && dims[0] == 3 &&
          dims[1] == 4);
    size_t size = 0;
    CHECK_OK(nvidia_clara_fastio__size(b1, &size));
    CHECK(size == 48);
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(b2, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    const float *values = (const float *)data;
    for (int i = 0; i < 12; i++) CHECK(values[i] == (float)i);
    CHECK_OK(nvidia_clara_fastio__free(b1));
    nvidia_clara_fastio_alloc *b3 = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "grid", &b3), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "was freed");
    for (int i = 0; i < 12; i++) CHECK(values[i] == (float)i); /* still readable */
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, b2, "grid2"), NVIDIA_CLARA_RESULT_FAILED,
                "was freed");
    CHECK_OK(nvidia_clara_fastio__unmap(b2));
    CHECK_OK(nvidia_clara_fastio__release(b2));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

static int after_free(void) {
    nvidia_clara_fastio_context *ctx = join();
    nvidia_clara_fastio_alloc *x = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "grid", &x), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "\"grid\" was freed");
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "nope", &x), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "no publication named \"nope\"");
    CHECK(x == NULL);
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

static int hold_writer(void) {
    nvidia_clara_fastio_context *ctx = join();
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "shared", &a));
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    ((unsigned char *)data)[0] = 42;
    printf("MAPPED\n");
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof line, stdin) == NULL) return 0;
    return 0;
}

static int second_writer(int expect_busy) {
    nvidia_clara_fastio_context *ctx = join();
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "shared", &a));
    void *data = NULL;
    if (expect_busy) {
        CHECK_FAILS(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data),
                    NVIDIA_CLARA_RESULT_BUSY, "one writer at a time");
        CHECK(data == NULL);
        /* Readers may map beside the writer (dirty reads, as Clara allows). */
        CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
        CHECK(((const unsigned char *)data)[0] == 42);
    } else {
        CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    }
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__release(a));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    if (strcmp(argv[1], "produce") == 0) return produce();
    if (strcmp(argv[1], "consume") == 0) return consume();
    if (strcmp(argv[1], "after-free") == 0) return after_free();
    if (strcmp(argv[1], "hold-writer") == 0) return hold_writer();
    if (strcmp(argv[1], "second-busy") == 0) return second_writer(1);
    if (strcmp(argv[1], "second-ok") == 0) return second_writer(0);
    fprintf(stderr, "unknown role %s\n", argv[1]);
    return 2;
}
