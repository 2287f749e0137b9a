/* Mapping rules: Clara's writer exclusivity (among the handles of
 * one process), readers beside a writer (dirty reads allowed), and the MMU guard on
 * read-only handles: a write through one faults and changes nothing. */
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 4096, &a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "shared"));
    nvidia_clara_fastio_alloc *w1 = NULL, *w2 = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "shared", &w1));
    CHECK_OK(nvidia_clara_fastio__get(ctx, "shared", &w2));

    void *p1 = NULL, *p2 = NULL, *pa = NULL;
    CHECK_OK(nvidia_clara_fastio__map(w1, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p1));
    CHECK_FAILS(nvidia_clara_fastio__map(w2, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p2),
                NVIDIA_CLARA_RESULT_BUSY, "one writer at a time");
    CHECK_FAILS(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &pa),
                NVIDIA_CLARA_RESULT_BUSY, "one writer at a time");
    CHECK(p2 == NULL && pa == NULL);
    /* A reader beside the writer sees its writes through the same pages. */
    CHECK_OK(nvidia_clara_fastio__map(w2, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &p2));
    ((unsigned char *)p1)[100] = 42;
    CHECK(((const unsigned char *)p2)[100] == 42);
    CHECK_OK(nvidia_clara_fastio__unmap(w2));
    /* Once the writer unmaps, another handle may write. */
    CHECK_OK(nvidia_clara_fastio__unmap(w1));
    CHECK_OK(nvidia_clara_fastio__map(w2, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p2));
    CHECK_FAILS(nvidia_clara_fastio__map(w1, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p1),
                NVIDIA_CLARA_RESULT_BUSY, "one writer at a time");
    /* Releasing a writer that is still mapped gives up its exclusivity too. */
    CHECK_OK(nvidia_clara_fastio__release(w2));
    CHECK_OK(nvidia_clara_fastio__map(w1, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p1));
    CHECK_OK(nvidia_clara_fastio__release(w1));

    /* A read-only handle: the kernel refuses writes. */
    nvidia_clara_fastio_alloc *ro = NULL;
    CHECK_OK(nvidia_clara_fastio__get_with_access(ctx, "shared", NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
                                                  &ro));
    void *rp = NULL;
    CHECK_OK(nvidia_clara_fastio__map(ro, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &rp));
    CHECK(((const unsigned char *)rp)[100] == 42);
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        ((volatile unsigned char *)rp)[100] = 7; /* must fault */
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS));
    CHECK(((const unsigned char *)rp)[100] == 42);
    CHECK_OK(nvidia_clara_fastio__release(ro));
    CHECK_OK(nvidia_clara_fastio__free(a));
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    puts("mapping ok");
    return 0;
}
