/*
 * slice_range: a Clara pipeline operator written in C against Clara's documented API
 * (clara.h, libnvclara.so). In the demo pipeline it reads the Rust threshold operator's
 * dynamic FastIO input foreground-slices (int32[-1]) and writes the FastIO output
 * slice-range (int32[2]): the first and the last slice with foreground, or -1, -1 when
 * there is none. The C operator voxel_report reads slice-range after it.
 *
 * Build (what `cargo xtask clib` and `cargo xtask demo` do):
 *   cc -std=c11 -Wall -Werror -I crates/fastio-ffi/include examples/c/slice_range.c \
 *      -L target/release -lnvclara -Wl,-rpath,'$ORIGIN' -o target/release/slice_range
 */
#include <clara.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Prints the failed call and the library's message, and fails the callback. */
#define TRY(call)                                                                     \
    do {                                                                              \
        if ((call) != 0) {                                                            \
            fprintf(stderr, "slice_range: %s failed: %s\n", #call,                    \
                    nvidia_clara_last_error_message());                               \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

static nvidia_clara_fastio_entry *find(nvidia_clara_fastio_entry **entries, const char *name) {
    for (size_t i = 0; entries[i] != NULL; i++) {
        char buffer[256];
        size_t len = 0;
        if (nvidia_clara_fastio_entry__name(entries[i], buffer, (int)sizeof buffer, &len) == 0 &&
            strcmp(buffer, name) == 0) {
            return entries[i];
        }
    }
    return NULL;
}

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    nvidia_clara_fastio_entry **inputs = NULL;
    nvidia_clara_fastio_entry **outputs = NULL;
    TRY(nvidia_clara_payload__fastio_input_entries(payload, &inputs));
    TRY(nvidia_clara_payload__fastio_output_entries(payload, &outputs));
    nvidia_clara_fastio_entry *slices_entry = find(inputs, "foreground-slices");
    nvidia_clara_fastio_entry *range_entry = find(outputs, "slice-range");
    if (slices_entry == NULL || range_entry == NULL) {
        fprintf(stderr, "slice_range: expected input foreground-slices, output slice-range\n");
        return 1;
    }

    /* A dynamic int32[-1] input: its length was fixed by the producer at run time, and
     * it has no memory when the producer never made it (a standalone run). */
    int allocated = 0;
    TRY(nvidia_clara_fastio_entry__is_allocated(slices_entry, &allocated));
    int32_t range[2] = {-1, -1};
    int64_t length = 0;
    if (allocated) {
        size_t rank = 0;
        TRY(nvidia_clara_fastio_entry__shape(slices_entry, &length, 1, &rank));
        void *data = NULL;
        TRY(nvidia_clara_fastio_entry__map(slices_entry, &data));
        const int32_t *slices = (const int32_t *)data;
        if (length > 0) {
            range[0] = slices[0];
            range[1] = slices[length - 1];
        }
        TRY(nvidia_clara_fastio_entry__unmap(slices_entry));
    }

    /* A pre-allocated int32[2] output: check what the pipeline declared, then map, write
     * and unmap it. A later operator reads it once this one has finished. */
    nvidia_clara_element_type type = -1;
    TRY(nvidia_clara_fastio_entry__element_type(range_entry, &type));
    size_t size = 0;
    TRY(nvidia_clara_fastio_entry__size(range_entry, &size));
    if (type != NVIDIA_CLARA_ELEMENT_TYPE_INT32 || size != sizeof range) {
        fprintf(stderr, "slice_range: slice-range must be int32[2] (type %d, %zu bytes)\n",
                (int)type, size);
        return 1;
    }
    void *out = NULL;
    TRY(nvidia_clara_fastio_entry__map(range_entry, &out));
    memcpy(out, range, sizeof range);
    TRY(nvidia_clara_fastio_entry__unmap(range_entry));

    printf("slice range: %d to %d (of %lld slices with foreground)\n", (int)range[0],
           (int)range[1], (long long)length);
    return 0;
}

int main(void) {
    nvidia_clara_cpd *cpd = NULL;
    if (nvidia_clara_cpd__create(NULL, NULL, &cpd) != 0 ||
        nvidia_clara_cpd__start(cpd, NULL, execute, NULL) != 0) {
        fprintf(stderr, "slice_range: %s\n", nvidia_clara_last_error_message());
        return 1;
    }
    result outcome = nvidia_clara_cpd__wait_for_completion(cpd);
    if (outcome != 0) fprintf(stderr, "slice_range: %s\n", nvidia_clara_last_error_message());
    nvidia_clara_cpd__release(cpd);
    return outcome == 0 ? 0 : 1;
}
