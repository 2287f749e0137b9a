/* Reclaiming unreleased handles, without a driver: an operator exits without releasing its
 * handles (one allocation published, one private). The test checks the server's
 * accounting after the process is gone. */
#include "check.h"

int main(void) {
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_fastio_context__connect(NULL, &ctx));
    nvidia_clara_fastio_alloc *published = NULL, *private_alloc = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 1 << 20, &published));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, published, "kept"));
    CHECK_OK(nvidia_clara_fastio__create(ctx, 3 << 20, &private_alloc));
    return 0; /* no release: the server drops this process's handles when it exits */
}
