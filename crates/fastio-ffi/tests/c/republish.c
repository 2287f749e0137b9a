/* Publications replaced or withdrawn on purpose (publish-once stays the default), and the
 * wider publication names. Compiled as C11. */
#include "check.h"

/* A new uint8 allocation of `n` bytes, each `value`, published as `name` with `publish`. */
static nvidia_clara_fastio_alloc *bytes(nvidia_clara_fastio_context *ctx, size_t n,
                                        unsigned char value) {
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, n, &a));
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_UINT8, &n, 1));
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    memset(data, value, n);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    return a;
}

static unsigned char first_byte(nvidia_clara_fastio_alloc *a) {
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    unsigned char b = *(const unsigned char *)data;
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    return b;
}

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));

    nvidia_clara_fastio_alloc *one = bytes(ctx, 4, 1);
    CHECK_OK(nvidia_clara_fastio__publish(ctx, one, "ct.series1/mask"));
    CHECK_OK(nvidia_clara_fastio__release(one));
    nvidia_clara_fastio_alloc *old = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "ct.series1/mask", &old));

    /* Publishing the name again is refused, with a hint; replacing it is deliberate. */
    nvidia_clara_fastio_alloc *two = bytes(ctx, 4, 2);
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, two, "ct.series1/mask"),
                NVIDIA_CLARA_RESULT_FAILED, "replace it or unpublish it");
    CHECK_OK(nvidia_clara_fastio__publish_replace(ctx, two, "ct.series1/mask"));
    CHECK_OK(nvidia_clara_fastio__release(two));
    nvidia_clara_fastio_alloc *now = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "ct.series1/mask", &now));
    CHECK(first_byte(now) == 2);
    CHECK(first_byte(old) == 1); /* the old handle keeps the old memory */
    CHECK_OK(nvidia_clara_fastio__release(old));

    /* After a free the name is taken until it is unpublished. */
    CHECK_OK(nvidia_clara_fastio__free(now));
    nvidia_clara_fastio_alloc *three = bytes(ctx, 4, 3);
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, three, "ct.series1/mask"),
                NVIDIA_CLARA_RESULT_NOT_FOUND, "was freed");
    CHECK_OK(nvidia_clara_fastio__unpublish(ctx, "ct.series1/mask"));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, three, "ct.series1/mask"));
    CHECK_OK(nvidia_clara_fastio__release(three));
    CHECK_OK(nvidia_clara_fastio__get(ctx, "ct.series1/mask", &now));
    CHECK(first_byte(now) == 3);
    CHECK_OK(nvidia_clara_fastio__release(now));

    /* Unpublishing withdraws the name; an unknown name and bad arguments fail. */
    CHECK_OK(nvidia_clara_fastio__unpublish(ctx, "ct.series1/mask"));
    nvidia_clara_fastio_alloc *none = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "ct.series1/mask", &none),
                NVIDIA_CLARA_RESULT_NOT_FOUND, "no publication");
    CHECK(none == NULL);
    CHECK_FAILS(nvidia_clara_fastio__unpublish(ctx, "ct.series1/mask"),
                NVIDIA_CLARA_RESULT_NOT_FOUND, "no publication");
    CHECK_FAILS(nvidia_clara_fastio__unpublish(ctx, NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "NULL");
    CHECK_FAILS(nvidia_clara_fastio__unpublish(NULL, "x"), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "is NULL");
    nvidia_clara_fastio_alloc *four = bytes(ctx, 1, 4);
    CHECK_FAILS(nvidia_clara_fastio__publish_replace(ctx, four, "../escape"),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "not allowed");
    CHECK_OK(nvidia_clara_fastio__release(four));

    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    puts("republish ok");
    return 0;
}
