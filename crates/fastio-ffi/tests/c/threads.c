/* The last-error message belongs to the calling thread: a failure in one thread neither
 * replaces nor clears another thread's message, and success leaves it in place. */
#include <pthread.h>

#include "check.h"

static void *fail_differently(void *arg) {
    (void)arg;
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__create_in_process(&ctx));
    nvidia_clara_fastio_alloc *out = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "other-thread", &out), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "other-thread");
    CHECK_OK(nvidia_clara_fastio_context__release(ctx));
    return NULL;
}

int main(void) {
    CHECK(strcmp(nvidia_clara_last_error_message(), "") == 0);
    CHECK_FAILS(nvidia_clara_fastio__release(NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "nvidia_clara_fastio__release: `nvidia_clara_fastio_alloc` is NULL");
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, fail_differently, NULL) == 0);
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK(strcmp(nvidia_clara_last_error_message(),
                 "nvidia_clara_fastio__release: `nvidia_clara_fastio_alloc` is NULL") == 0);
    puts("threads ok");
    return 0;
}
