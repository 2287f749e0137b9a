/* Huge pages on request: NVIDIA_CLARA_FASTIO_CREATE_HUGETLB takes the memory from the
 * machine's hugetlb pool where it can hold it and falls back to ordinary shared memory
 * otherwise; nvidia_clara_fastio__is_hugetlb says which, and the memory works the same. */
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Free bytes in the hugetlb pool, from /proc/meminfo. */
static unsigned long long hugetlb_free_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    CHECK(f != NULL);
    char line[256];
    unsigned long long free_pages = 0, page_kib = 2048;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "HugePages_Free: %llu", &free_pages);
        sscanf(line, "Hugepagesize: %llu", &page_kib);
    }
    fclose(f);
    return free_pages * page_kib * 1024;
}

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    const size_t size = 8 << 20;
    int expected = hugetlb_free_bytes() >= size;

    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create_with_flags(ctx, size, NVIDIA_CLARA_FASTIO_CREATE_HUGETLB,
                                                    &a));
    int32_t hugetlb = -1;
    CHECK_OK(nvidia_clara_fastio__is_hugetlb(a, &hugetlb));
    CHECK(hugetlb == expected);
    void *p = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p));
    CHECK(((unsigned char *)p)[size - 1] == 0); /* zeroed, like nvidia_clara_fastio__create */
    memset(p, 9, size);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "huge"));
    CHECK_OK(nvidia_clara_fastio__release(a));

    nvidia_clara_fastio_alloc *b = NULL;
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, "huge", NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
                                                  &b));
    CHECK_OK(nvidia_clara_fastio__is_hugetlb(b, &hugetlb));
    CHECK(hugetlb == expected);
    const void *q = NULL;
    CHECK_OK(nvidia_clara_fastio__map(b, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, (void **)&q));
    CHECK(((const unsigned char *)q)[size / 2] == 9);
    CHECK_OK(nvidia_clara_fastio__unmap(b));
    CHECK_OK(nvidia_clara_fastio__release(b));

    /* No flags: ordinary memory, as nvidia_clara_fastio__create. */
    nvidia_clara_fastio_alloc *c = NULL;
    CHECK_OK(nvidia_clara_fastio__create_with_flags(ctx, 4096, 0, &c));
    CHECK_OK(nvidia_clara_fastio__is_hugetlb(c, &hugetlb));
    CHECK(hugetlb == 0);
    CHECK_OK(nvidia_clara_fastio__release(c));

    /* Unknown bits are refused, changing nothing; so are a NULL output and a bad handle. */
    nvidia_clara_fastio_alloc *unchanged = NULL;
    CHECK(nvidia_clara_fastio__create_with_flags(ctx, 4096, 0x80, &unchanged) ==
          NVIDIA_CLARA_RESULT_INVALID_ARGUMENT);
    CHECK(unchanged == NULL);
    CHECK(strstr(nvidia_clara_last_error_message(), "unknown bits") != NULL);
    CHECK(nvidia_clara_fastio__is_hugetlb(c, &hugetlb) == NVIDIA_CLARA_RESULT_INVALID_HANDLE);
    CHECK(nvidia_clara_fastio__is_hugetlb(NULL, &hugetlb) != 0);

    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    printf("hugetlb %s ok\n", expected ? "pool" : "fallback");
    return 0;
}
