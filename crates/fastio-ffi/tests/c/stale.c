/* A pointer into a released allocation faults: the library keeps the mapping for reuse but
 * parks it inaccessible (PROT_NONE) before the release reaches the context, so a stale
 * read or write cannot see or change memory that another handle may now own. */
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* Runs `touch` on `p` in a child process; returns the signal that ended it (0: none). */
static int child_signal(volatile unsigned char *p, int write) {
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        if (write) {
            p[0] = 1;
        } else {
            volatile unsigned char c = p[0];
            (void)c;
        }
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 1 << 20, &a));
    void *p = NULL;
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &p));
    ((unsigned char *)p)[0] = 42;
    /* While the handle lives, the pointer works (also in a forked child). */
    CHECK(child_signal(p, 0) == 0);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__release(a));
    int read_signal = child_signal(p, 0);
    int write_signal = child_signal(p, 1);
    CHECK(read_signal == SIGSEGV);
    CHECK(write_signal == SIGSEGV);
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    printf("stale ok\n");
    return 0;
}
