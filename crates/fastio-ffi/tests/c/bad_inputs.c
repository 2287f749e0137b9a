/* Every bad input of the allocation API: each call fails with the documented code and a
 * message, leaves its outputs unchanged, and corrupts nothing (checked at the end on an
 * allocation made before the bad calls). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "check.h"

static nvidia_clara_fastio_alloc *const SENTINEL = (nvidia_clara_fastio_alloc *)0x5a5a50;

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    CHECK_FAILS(nvidia_clara_fastio_context__create_in_process(NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`context_out` is NULL");

    /* A good allocation, typed, filled and published, that nothing below may disturb. */
    nvidia_clara_fastio_alloc *keep = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 64, &keep));
    const size_t keep_dims[1] = {16};
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(keep, NVIDIA_CLARA_ELEMENT_TYPE_INT32,
                                                          keep_dims, 1));
    void *keep_data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(keep, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &keep_data));
    for (int i = 0; i < 16; i++) ((int32_t *)keep_data)[i] = 1000 + i;
    CHECK_OK(nvidia_clara_fastio__unmap(keep));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, keep, "keep"));

    /* create */
    nvidia_clara_fastio_alloc *out = SENTINEL;
    CHECK_FAILS(nvidia_clara_fastio__create(NULL, 16, &out), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`nvidia_clara_fastio_context` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__create(ctx, 16, NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`alloc_out` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__create(ctx, SIZE_MAX / 2, &out), NVIDIA_CLARA_RESULT_FAILED,
                "cannot reserve");
    CHECK(out == SENTINEL);

    /* publish */
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`name` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, ""), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "it is empty");
    char long_name[300];
    memset(long_name, 'n', 256);
    long_name[256] = '\0';
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, long_name),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "the limit is 255");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, "a b"), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "is not allowed");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, "bad\xff"),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "not valid UTF-8");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, keep, "keep"), NVIDIA_CLARA_RESULT_FAILED,
                "already published");
    CHECK_FAILS(nvidia_clara_fastio__publish(NULL, keep, "x"), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`nvidia_clara_fastio_context` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, NULL, "x"), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`nvidia_clara_fastio_alloc` is NULL");

    /* get */
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "nope", &out), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "no publication named \"nope\"");
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, NULL, &out), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`name` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "keep", NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`alloc_out` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__get_with_access(ctx, "keep", 7, &out),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`access` is 7");
    CHECK(out == SENTINEL);

    /* set_type_and_dimensions: wrong types and dimension counts change nothing */
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 24, &a));
    const size_t dims[3] = {2, 3, 1};
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                          dims, 2));
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, 11, dims, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`element_type` is 11");
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, -1, dims, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`element_type` is -1");
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_UINT8,
                                                             dims, 0),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`dimension_count` is 0");
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_UINT8,
                                                             dims, 65),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`dimension_count` is 65");
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_UINT8,
                                                             NULL, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`dimensions` is NULL");
    const size_t big[2] = {5, 5};
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                             big, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "need 100 bytes but the allocation has 24");
    const size_t overflow[2] = {SIZE_MAX / 2, 4};
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT64,
                                                             overflow, 2),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "overflows");
    nvidia_clara_element_type type = -1;
    size_t got[4] = {0, 0, 0, 0};
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(a, &type, got, 4, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32 && count == 2 && got[0] == 2 && got[1] == 3);

    /* get_type_and_dimensions: buffer protocol and untyped handles */
    count = 0;
    CHECK_FAILS(nvidia_clara_fastio__get_type_and_dimensions(a, NULL, NULL, 0, &count),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "2 values are needed");
    CHECK(count == 2);
    count = 0;
    size_t one[1] = {77};
    CHECK_FAILS(nvidia_clara_fastio__get_type_and_dimensions(a, &type, one, 1, &count),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "holds 1 values, 2 are needed");
    CHECK(count == 2 && one[0] == 77);
    CHECK_FAILS(nvidia_clara_fastio__get_type_and_dimensions(a, &type, got, 4, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`dimension_count_out` is NULL");
    nvidia_clara_fastio_alloc *untyped = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 8, &untyped));
    CHECK_FAILS(nvidia_clara_fastio__get_type_and_dimensions(untyped, &type, got, 4, &count),
                NVIDIA_CLARA_RESULT_NOT_FOUND, "no type and dimensions");
    CHECK_FAILS(nvidia_clara_fastio__size(untyped, NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`size_out` is NULL");

    /* map / unmap */
    void *data = NULL;
    CHECK_FAILS(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`data_out` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__map(a, 2, &data), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`access` is 2");
    CHECK_FAILS(nvidia_clara_fastio__unmap(a), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "not mapped");
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    void *again = NULL;
    CHECK_FAILS(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &again),
                NVIDIA_CLARA_RESULT_BUSY, "already mapped");
    CHECK(again == NULL);
    CHECK_OK(nvidia_clara_fastio__unmap(a));

    /* a read-only handle cannot be mapped for writing */
    nvidia_clara_fastio_alloc *ro = NULL;
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, "keep", NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
                                                  &ro));
    nvidia_clara_fastio_access access = -1;
    CHECK_OK(nvidia_clara_fastio__access(ro, &access));
    CHECK(access == NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY);
    /* the context's own message (as Rust and Python say it) */
    CHECK_FAILS(nvidia_clara_fastio__map(ro, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data),
                NVIDIA_CLARA_RESULT_READ_ONLY, "this handle is read-only; it cannot be written");
    CHECK_OK(nvidia_clara_fastio__map(ro, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    CHECK(((const int32_t *)data)[15] == 1015);
    CHECK_OK(nvidia_clara_fastio__release(ro));

    /* double release, use after release, use after free, forged and wrong-kind handles */
    CHECK_OK(nvidia_clara_fastio__release(a));
    CHECK_FAILS(nvidia_clara_fastio__release(a), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__free(a), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    size_t size = 0;
    CHECK_FAILS(nvidia_clara_fastio__size(a, &size), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "released or freed");
    CHECK_FAILS(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__publish(ctx, a, "late"), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_UINT8,
                                                             dims, 1),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");
    CHECK_OK(nvidia_clara_fastio__free(untyped));
    CHECK_FAILS(nvidia_clara_fastio__free(untyped), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__get_type_and_dimensions(untyped, &type, got, 4, &count),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__release(NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`nvidia_clara_fastio_alloc` is NULL");
    CHECK_FAILS(nvidia_clara_fastio__release((nvidia_clara_fastio_alloc *)0x1234),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "never returned by this library");
    CHECK_FAILS(nvidia_clara_fastio__release(SENTINEL), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__create((nvidia_clara_fastio_context *)keep, 8, &out),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "as a nvidia_clara_fastio_context");
    CHECK_FAILS(nvidia_clara_fastio__release((nvidia_clara_fastio_alloc *)ctx),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "as a nvidia_clara_fastio_alloc");

    /* publishing through another context's handle is refused */
    nvidia_clara_fastio_context *other = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&other));
    CHECK_FAILS(nvidia_clara_fastio__publish(other, keep, "elsewhere"),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "another context");
    CHECK_OK(nvidia_clara_fastio_context__release(other));
    CHECK_FAILS(nvidia_clara_fastio_context__release(other), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__get(other, "keep", &out), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK(out == SENTINEL);

    /* connecting to nothing */
    nvidia_clara_fastio_context *none = NULL;
    CHECK_FAILS(nvidia_clara_fastio_context__connect("@fastio-no-such-server", &none),
                NVIDIA_CLARA_RESULT_FAILED, "cannot connect");
    CHECK_FAILS(nvidia_clara_fastio_context__connect("nonsense", &none),
                NVIDIA_CLARA_RESULT_FAILED, "expected @name or fd:N");
    /* A descriptor that is no context connection is left open, never closed: stdin, and
     * a pipe. */
    int stdin_open = fcntl(0, F_GETFD) != -1;
    CHECK_FAILS(nvidia_clara_fastio_context__connect("fd:0", &none), NVIDIA_CLARA_RESULT_FAILED,
                "descriptor 0");
    CHECK((fcntl(0, F_GETFD) != -1) == stdin_open);
    int pipe_fds[2];
    CHECK(pipe(pipe_fds) == 0);
    char address[32];
    snprintf(address, sizeof address, "fd:%d", pipe_fds[0]);
    CHECK_FAILS(nvidia_clara_fastio_context__connect(address, &none), NVIDIA_CLARA_RESULT_FAILED,
                "not a context connection");
    CHECK(fcntl(pipe_fds[0], F_GETFD) != -1);
    CHECK(write(pipe_fds[1], "x", 1) == 1);
    char byte = 0;
    CHECK(read(pipe_fds[0], &byte, 1) == 1 && byte == 'x');
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    CHECK(none == NULL);

    /* Nothing was corrupted: "keep" reads back intact through a new handle. */
    nvidia_clara_fastio_alloc *check = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "keep", &check));
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(check, &type, got, 4, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_INT32 && count == 1 && got[0] == 16);
    CHECK_OK(nvidia_clara_fastio__size(check, &size));
    CHECK(size == 64);
    CHECK_OK(nvidia_clara_fastio__map(check, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    for (int i = 0; i < 16; i++) CHECK(((const int32_t *)data)[i] == 1000 + i);
    CHECK_OK(nvidia_clara_fastio__free(check));
    CHECK_OK(nvidia_clara_fastio__release(keep));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    puts("bad inputs ok");
    return 0;
}
