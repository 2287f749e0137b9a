/* Element types between languages (C side): a [2,3] array of every element type crosses processes
 * bit-exactly with the right byte size. Roles:
 *   produce: publishes "c_<type>" for each type, filled with pattern(code, i).
 *   consume: reads "r_<type>" (published by the Rust test process with the same pattern)
 *            and "c_<type>", and checks type, dimensions, size and every byte. */
#include <stdint.h>

#include "check.h"

static const char *const NAMES[11] = {"uint8", "uint16", "uint32",  "uint64",  "int8",   "int16",
                                      "int32", "int64",  "float16", "float32", "float64"};
static const size_t SIZES[11] = {1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8};

/* Byte i of the array of type `code`; the Rust test computes the same. */
static unsigned char pattern(int code, size_t i) {
    return (unsigned char)((i * 31u + (size_t)code * 7u + 3u) & 0xffu);
}

static void check_array(nvidia_clara_fastio_context *ctx, const char *prefix, int code) {
    char name[64];
    snprintf(name, sizeof name, "%s_%s", prefix, NAMES[code]);
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, name, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
                                                  &a));
    nvidia_clara_element_type type = -1;
    size_t dims[4] = {0};
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(a, &type, dims, 4, &count));
    CHECK(type == code && count == 2 && dims[0] == 2 && dims[1] == 3);
    size_t size = 0;
    CHECK_OK(nvidia_clara_fastio__size(a, &size));
    CHECK(size == 6 * SIZES[code]);
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    for (size_t i = 0; i < size; i++) CHECK(((const unsigned char *)data)[i] == pattern(code, i));
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__release(a));
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__connect(NULL, &ctx));
    for (int code = NVIDIA_CLARA_ELEMENT_TYPE_UINT8; code <= NVIDIA_CLARA_ELEMENT_TYPE_FLOAT64;
         code++) {
        if (strcmp(argv[1], "produce") == 0) {
            size_t bytes = 6 * SIZES[code];
            nvidia_clara_fastio_alloc *a = NULL;
            CHECK_OK(nvidia_clara_fastio__create(ctx, bytes, &a));
            const size_t dims[2] = {2, 3};
            CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, code, dims, 2));
            void *data = NULL;
            CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
            for (size_t i = 0; i < bytes; i++) ((unsigned char *)data)[i] = pattern(code, i);
            CHECK_OK(nvidia_clara_fastio__unmap(a));
            char name[64];
            snprintf(name, sizeof name, "c_%s", NAMES[code]);
            CHECK_OK(nvidia_clara_fastio__publish(ctx, a, name));
            CHECK_OK(nvidia_clara_fastio__release(a));
        } else {
            check_array(ctx, "r", code);
            check_array(ctx, "c", code);
        }
    }
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return 0;
}
