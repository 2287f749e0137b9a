/* An operator written against Clara's documentation: it includes clara.h and links
 * with -lnvclara; only the include and link flags point at fastio. */
#include <clara.h>
#include <stdio.h>

int main(void) {
    nvidia_clara_fastio_context *context = NULL;
    if (nvidia_clara_fastio_context__create_in_process(&context) != 0) return 1;
    nvidia_clara_fastio_alloc *alloc = NULL;
    if (nvidia_clara_fastio__create(context, 1024, &alloc) != 0) return 1;
    if (nvidia_clara_fastio__publish(context, alloc, "volume") != 0) return 1;
    if (nvidia_clara_fastio__release(alloc) != 0) return 1;
    nvidia_clara_fastio_alloc *got = NULL;
    if (nvidia_clara_fastio__get(context, "volume", &got) != 0) return 1;
    if (nvidia_clara_fastio__free(got) != 0) return 1;
    if (nvidia_clara_fastio__get(context, "volume", &got) == 0) return 1;
    printf("drop-in ok: %s\n", nvidia_clara_last_error_message());
    return nvidia_clara_fastio_context__release(context);
}
