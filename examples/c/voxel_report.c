/*
 * voxel_report: a Clara pipeline operator written in C against Clara's documented API
 * (clara.h, libnvclara.so). In the demo pipeline it reads three FastIO inputs: the
 * voxel count and the list of slices with foreground, made by the Rust operators, and
 * the slice range, made by the C operator slice_range (examples/c/slice_range.c). It
 * writes a short text report to its disk output.
 *
 * Build (what `cargo xtask clib` and `cargo xtask demo` do):
 *   cc -std=c11 -Wall -Werror -I crates/fastio-ffi/include examples/c/voxel_report.c \
 *      -L target/release -lnvclara -Wl,-rpath,'$ORIGIN' -o target/release/voxel_report
 */
#include <clara.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Prints the failed call and the library's message, and fails the callback. */
#define TRY(call)                                                                     \
    do {                                                                              \
        if ((call) != 0) {                                                            \
            fprintf(stderr, "voxel_report: %s failed: %s\n", #call,                   \
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
    TRY(nvidia_clara_payload__fastio_input_entries(payload, &inputs));
    nvidia_clara_fastio_entry *count_entry = find(inputs, "voxel-count");
    nvidia_clara_fastio_entry *slices_entry = find(inputs, "foreground-slices");
    nvidia_clara_fastio_entry *range_entry = find(inputs, "slice-range");
    if (count_entry == NULL || slices_entry == NULL || range_entry == NULL) {
        fprintf(stderr, "voxel_report: expected inputs voxel-count, foreground-slices and "
                        "slice-range\n");
        return 1;
    }

    /* A u64 primitive: one element, read-only. */
    void *data = NULL;
    TRY(nvidia_clara_fastio_entry__map(count_entry, &data));
    uint64_t voxels = *(const uint64_t *)data;
    TRY(nvidia_clara_fastio_entry__unmap(count_entry));

    /* A dynamic int32[-1]: its length was fixed by the producer at run time. */
    int allocated = 0;
    TRY(nvidia_clara_fastio_entry__is_allocated(slices_entry, &allocated));
    int64_t length = 0;
    int32_t first = -1, last = -1;
    if (allocated) {
        size_t rank = 0;
        TRY(nvidia_clara_fastio_entry__shape(slices_entry, &length, 1, &rank));
        TRY(nvidia_clara_fastio_entry__map(slices_entry, &data));
        const int32_t *slices = (const int32_t *)data;
        if (length > 0) {
            first = slices[0];
            last = slices[length - 1];
        }
        TRY(nvidia_clara_fastio_entry__unmap(slices_entry));
    }

    /* An int32[2] made by another C operator: first and last slice, or -1, -1. */
    size_t size = 0;
    TRY(nvidia_clara_fastio_entry__size(range_entry, &size));
    if (size != 2 * sizeof(int32_t)) {
        fprintf(stderr, "voxel_report: slice-range has %zu bytes, not 8\n", size);
        return 1;
    }
    TRY(nvidia_clara_fastio_entry__map(range_entry, &data));
    int32_t range[2];
    memcpy(range, data, sizeof range);
    TRY(nvidia_clara_fastio_entry__unmap(range_entry));
    char range_text[64] = "none";
    if (range[0] >= 0) {
        snprintf(range_text, sizeof range_text, "%d to %d", (int)range[0], (int)range[1]);
    }

    char report[512];
    snprintf(report, sizeof report,
             "voxels above the threshold: %llu\nslices with foreground: %lld (first %d, last %d)\n"
             "slice range from slice_range: %s\n",
             (unsigned long long)voxels, (long long)length, (int)first, (int)last, range_text);
    fputs(report, stdout);

    /* The disk output: Clara's buffer protocol gives the path's length first. */
    nvidia_clara_payload_entry **outputs = NULL;
    TRY(nvidia_clara_payload__output_entries(payload, &outputs));
    if (outputs[0] != NULL) {
        char dir[4096];
        size_t len = 0;
        TRY(nvidia_clara_payload_entry__path(outputs[0], dir, (int)sizeof dir, &len));
        char path[4200];
        snprintf(path, sizeof path, "%s/voxel-report.txt", dir);
        FILE *file = fopen(path, "w");
        if (file == NULL || fputs(report, file) < 0 || fclose(file) != 0) {
            perror(path);
            return 1;
        }
    }
    return 0;
}

int main(void) {
    nvidia_clara_cpd *cpd = NULL;
    if (nvidia_clara_cpd__create(NULL, NULL, &cpd) != 0 ||
        nvidia_clara_cpd__start(cpd, NULL, execute, NULL) != 0) {
        fprintf(stderr, "voxel_report: %s\n", nvidia_clara_last_error_message());
        return 1;
    }
    result outcome = nvidia_clara_cpd__wait_for_completion(cpd);
    if (outcome != 0) fprintf(stderr, "voxel_report: %s\n", nvidia_clara_last_error_message());
    nvidia_clara_cpd__release(cpd);
    return outcome == 0 ? 0 : 1;
}
