/* The driver life-cycle (prepare, execute, cleanup and their results), run standalone (no job):
 * order of the callbacks, NULL callbacks, application data, a failing execute, the
 * payload's context, allocations left unreleased, and every misuse of the driver and
 * payload handles. */
#include <stdint.h>

#include "check.h"

struct log {
    char events[16];
    int notifications;
    int failures;
    char last_failure[512];
};

static struct log *log_of(nvidia_clara_cpd *cpd) {
    void *data = NULL;
    CHECK_OK(nvidia_clara_cpd__application_data(cpd, &data));
    return (struct log *)data;
}

static void append(nvidia_clara_cpd *cpd, char c) {
    struct log *log = log_of(cpd);
    size_t n = strlen(log->events);
    log->events[n] = c;
    log->events[n + 1] = '\0';
}

static void notify(nvidia_clara_cpd *cpd, int code, const char *message) {
    struct log *log = log_of(cpd);
    log->notifications++;
    if (code != 0) {
        log->failures++;
        snprintf(log->last_failure, sizeof log->last_failure, "%s", message);
    }
}

static result prepare(nvidia_clara_cpd *cpd) {
    append(cpd, 'P');
    return 0;
}

static result cleanup(nvidia_clara_cpd *cpd) {
    append(cpd, 'C');
    return 0;
}

static nvidia_clara_payload *kept_payload;
static nvidia_clara_fastio_context *kept_context;
static nvidia_clara_fastio_alloc *kept_alloc;

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    append(cpd, 'E');
    /* The payload's context works like any other, and may not be released. */
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_context(payload, &ctx));
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 256, &a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "made-in-execute"));
    CHECK_OK(nvidia_clara_fastio__release(a));
    CHECK_FAILS(nvidia_clara_fastio_context__release(ctx), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "belongs to the payload");
    /* Waiting for or releasing the driver from its own callback would deadlock. */
    CHECK_FAILS(nvidia_clara_cpd__wait_for_completion(cpd), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "inside a life-cycle callback");
    CHECK_FAILS(nvidia_clara_cpd__release(cpd), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "inside a life-cycle callback");
    /* Kept on purpose, to check they are dead after execute. */
    kept_payload = payload;
    kept_context = ctx;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 4096, &kept_alloc)); /* never released */
    return 0;
}

static result execute_only(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)payload;
    append(cpd, 'E');
    return 0;
}

static result failing_execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)payload;
    append(cpd, 'E');
    return 3;
}

int main(void) {
    /* P, E, C in order; application data is the same pointer throughout. */
    struct log log;
    memset(&log, 0, sizeof log);
    nvidia_clara_cpd *cpd = NULL;
    CHECK_OK(nvidia_clara_cpd__create(notify, &log, &cpd));
    CHECK(log_of(cpd) == &log);
    CHECK_FAILS(nvidia_clara_cpd__wait_for_completion(cpd), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "not started");
    CHECK_OK(nvidia_clara_cpd__start(cpd, prepare, execute, cleanup));
    CHECK_FAILS(nvidia_clara_cpd__start(cpd, prepare, execute, cleanup), NVIDIA_CLARA_RESULT_BUSY,
                "started already");
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd));
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd)); /* the same outcome again */
    CHECK(strcmp(log.events, "PEC") == 0);
    CHECK(log.notifications == 4); /* prepare, execute, the unreleased handle, cleanup */
    CHECK(log.failures == 1);
    CHECK(strstr(log.last_failure, "without releasing 1 Fast I/O allocation handle(s)") != NULL);

    /* Everything execute was given is dead now, and says so. */
    nvidia_clara_payload_entry **entries = NULL;
    CHECK_FAILS(nvidia_clara_payload__input_entries(kept_payload, &entries),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");
    CHECK(entries == NULL);
    nvidia_clara_fastio_alloc *out = NULL;
    CHECK_FAILS(nvidia_clara_fastio__get(kept_context, "made-in-execute", &out),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");
    CHECK_FAILS(nvidia_clara_fastio__release(kept_alloc), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");

    char name[64];
    size_t len = 0;
    CHECK_OK(nvidia_clara_cpd__stage_name(cpd, name, (int)sizeof name, &len));
    CHECK(len == strlen(name) + 1 && strcmp(name, "lifecycle") == 0);
    CHECK_OK(nvidia_clara_cpd__job_id(cpd, name, (int)sizeof name, &len));
    CHECK(len == 37); /* a hyphenated UUID */
    CHECK_OK(nvidia_clara_cpd__release(cpd));
    CHECK_FAILS(nvidia_clara_cpd__release(cpd), NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                "not a live handle");
    CHECK_FAILS(nvidia_clara_cpd__start(cpd, NULL, execute_only, NULL),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "not a live handle");

    /* NULL prepare and cleanup are skipped. */
    memset(&log, 0, sizeof log);
    CHECK_OK(nvidia_clara_cpd__create(NULL, &log, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, NULL, execute_only, NULL));
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd));
    CHECK(strcmp(log.events, "E") == 0);
    CHECK_OK(nvidia_clara_cpd__release(cpd));

    /* A failing execute fails the run; cleanup still runs. */
    memset(&log, 0, sizeof log);
    CHECK_OK(nvidia_clara_cpd__create(notify, &log, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, prepare, failing_execute, cleanup));
    CHECK_FAILS(nvidia_clara_cpd__wait_for_completion(cpd), NVIDIA_CLARA_RESULT_FAILED,
                "the execute callback returned 3");
    CHECK(strcmp(log.events, "PEC") == 0);
    CHECK(log.failures == 1 && strstr(log.last_failure, "returned 3") != NULL);
    CHECK_OK(nvidia_clara_cpd__release(cpd));

    /* Release without waiting waits for the life-cycle. */
    memset(&log, 0, sizeof log);
    CHECK_OK(nvidia_clara_cpd__create(NULL, &log, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, prepare, execute_only, cleanup));
    CHECK_OK(nvidia_clara_cpd__release(cpd));
    CHECK(strcmp(log.events, "PEC") == 0);

    CHECK_FAILS(nvidia_clara_cpd__create(NULL, NULL, NULL), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "`cpd_out` is NULL");
    CHECK_FAILS(nvidia_clara_cpd__application_data(NULL, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`data_out` is NULL");
    puts("lifecycle ok");
    return 0;
}
