/* check.h: assertions for the C test programs. Each failure prints where and why, and
 * exits non-zero, so that the Rust test driver reports it. */
#ifndef FASTIO_TEST_CHECK_H
#define FASTIO_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clara_cpd.h"

/* The call must succeed. */
#define CHECK_OK(call)                                                                  \
    do {                                                                                \
        result check_r_ = (call);                                                       \
        if (check_r_ != 0) {                                                            \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call,     \
                    (int)check_r_, nvidia_clara_last_error_message());                  \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* The call must fail with `code`, and the thread's message must contain `text`. */
#define CHECK_FAILS(call, code, text)                                                   \
    do {                                                                                \
        result check_r_ = (call);                                                       \
        const char *check_m_ = nvidia_clara_last_error_message();                       \
        if (check_r_ != (code)) {                                                       \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d (%s): %s\n", __FILE__,   \
                    __LINE__, #call, (int)check_r_, (int)(code), #code, check_m_);       \
            exit(1);                                                                    \
        }                                                                               \
        if (strstr(check_m_, (text)) == NULL) {                                         \
            fprintf(stderr, "%s:%d: message of %s lacks \"%s\": \"%s\"\n", __FILE__,       \
                    __LINE__, #call, (text), check_m_);                                 \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* A plain condition. */
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);     \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

#endif
