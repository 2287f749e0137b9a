/* A C operator of a typed pipeline (tests/c_programs.rs writes the definition):
 *   producer -> grid float32[3,4] (pre-allocated), slices int32[3,-1] (dynamic),
 *               note string; and "ctx-grid" through the payload's context
 *   consumer <- grid, slices, note (read-only), and gets and frees "ctx-grid".
 * argv[1] is the role: producer, consumer (in a job), or consumer-alone (run standalone,
 * where the producer never ran). With argv[2] == "leak" the producer leaves one
 * allocation unreleased (it is reclaimed). Covers pre-allocated and dynamic FastIO
 * entries from C, and an allocation's round trip across processes. */
#include <stdint.h>

#include "check.h"

static const char *role;
static int leak;

static nvidia_clara_fastio_entry *find(nvidia_clara_fastio_entry **entries, const char *name) {
    for (size_t i = 0; entries[i] != NULL; i++) {
        char buffer[64];
        size_t len = 0;
        CHECK_OK(nvidia_clara_fastio_entry__name(entries[i], buffer, (int)sizeof buffer, &len));
        if (strcmp(buffer, name) == 0) return entries[i];
    }
    fprintf(stderr, "no FastIO entry named %s\n", name);
    exit(1);
}

static int flag(result (*f)(nvidia_clara_fastio_entry *, int *), nvidia_clara_fastio_entry *e) {
    int value = -1;
    CHECK_OK(f(e, &value));
    return value;
}

static void check_shape(nvidia_clara_fastio_entry *e, size_t n, const int64_t *expected) {
    int64_t dims[8];
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio_entry__shape(e, dims, 8, &count));
    CHECK(count == n);
    for (size_t i = 0; i < n; i++) CHECK(dims[i] == expected[i]);
}

static void produce(nvidia_clara_payload *payload) {
    nvidia_clara_fastio_entry **outputs = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_output_entries(payload, &outputs));
    nvidia_clara_fastio_entry *grid = find(outputs, "grid");
    nvidia_clara_fastio_entry *slices = find(outputs, "slices");
    nvidia_clara_fastio_entry *note = find(outputs, "note");

    /* A pre-allocated output. */
    CHECK(flag(nvidia_clara_fastio_entry__is_preallocated, grid) == 1);
    CHECK(flag(nvidia_clara_fastio_entry__is_allocated, grid) == 1);
    CHECK(flag(nvidia_clara_fastio_entry__is_dynamic, grid) == 0);
    size_t indices[4];
    size_t count = 99;
    CHECK_OK(nvidia_clara_fastio_entry__dynamic_indices(grid, indices, 4, &count));
    CHECK(count == 0);
    nvidia_clara_fastio_access access = -1;
    CHECK_OK(nvidia_clara_fastio_entry__access(grid, &access));
    CHECK(access == NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE);
    const int64_t grid_shape[2] = {3, 4};
    check_shape(grid, 2, grid_shape);
    nvidia_clara_element_type type = -1;
    CHECK_OK(nvidia_clara_fastio_entry__element_type(grid, &type));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32);
    size_t size = 0;
    CHECK_OK(nvidia_clara_fastio_entry__size(grid, &size));
    CHECK(size == 48);
    const size_t index0[1] = {0};
    const int64_t five[1] = {5};
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(grid, index0, five, 1),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "pre-allocated");
    CHECK_FAILS(nvidia_clara_fastio_entry__allocate(grid), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "pre-allocated");
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio_entry__map(grid, &data));
    void *again = NULL;
    CHECK_FAILS(nvidia_clara_fastio_entry__map(grid, &again), NVIDIA_CLARA_RESULT_BUSY,
                "already mapped");
    for (int i = 0; i < 12; i++) ((float *)data)[i] = (float)i;
    CHECK_OK(nvidia_clara_fastio_entry__unmap(grid));
    CHECK_FAILS(nvidia_clara_fastio_entry__unmap(grid), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "not mapped");

    /* A dynamic output. */
    CHECK(flag(nvidia_clara_fastio_entry__is_allocated, slices) == 0);
    CHECK(flag(nvidia_clara_fastio_entry__is_dynamic, slices) == 1);
    CHECK(flag(nvidia_clara_fastio_entry__is_preallocated, slices) == 0);
    CHECK_OK(nvidia_clara_fastio_entry__dynamic_indices(slices, indices, 4, &count));
    CHECK(count == 1 && indices[0] == 1);
    CHECK_FAILS(nvidia_clara_fastio_entry__size(slices, &size), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "no memory yet");
    CHECK_FAILS(nvidia_clara_fastio_entry__map(slices, &data), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "no memory yet");
    CHECK_FAILS(nvidia_clara_fastio_entry__allocate(slices), NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                "set every dynamic dimension");
    const int64_t nine[1] = {9};
    CHECK_OK(nvidia_clara_fastio_entry__update_shape(slices, index0, nine, 1)); /* ignored */
    const int64_t unset[2] = {3, -1};
    check_shape(slices, 2, unset);
    const size_t index1[1] = {1};
    const size_t index7[1] = {7};
    const int64_t zero[1] = {0};
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(slices, index7, five, 1),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "out of range");
    const int64_t minus[1] = {-2};
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(slices, index1, minus, 1),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "0 (empty) or more");
    /* An empty result is valid (numpy's semantics): allocated, of zero bytes. */
    CHECK_OK(nvidia_clara_fastio_entry__update_shape(slices, index1, zero, 1));
    const int64_t empty[2] = {3, 0};
    check_shape(slices, 2, empty);
    CHECK(flag(nvidia_clara_fastio_entry__is_allocated, slices) == 1);
    CHECK_OK(nvidia_clara_fastio_entry__size(slices, &size));
    CHECK(size == 0);
    CHECK_OK(nvidia_clara_fastio_entry__map(slices, &data));
    CHECK(data != NULL);
    CHECK_OK(nvidia_clara_fastio_entry__unmap(slices));
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(slices, NULL, five, 1),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`dimension_indices` is NULL");
    CHECK_OK(nvidia_clara_fastio_entry__update_shape(slices, index1, five, 1));
    const int64_t fixed[2] = {3, 5};
    check_shape(slices, 2, fixed);
    CHECK(flag(nvidia_clara_fastio_entry__is_allocated, slices) == 1);
    CHECK_OK(nvidia_clara_fastio_entry__size(slices, &size));
    CHECK(size == 3 * 5 * 4);
    CHECK_OK(nvidia_clara_fastio_entry__map(slices, &data));
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(slices, index1, five, 1),
                NVIDIA_CLARA_RESULT_BUSY, "while it is mapped");
    for (int i = 0; i < 15; i++) ((int32_t *)data)[i] = i * 10;
    CHECK_OK(nvidia_clara_fastio_entry__unmap(slices));

    /* A string output: uint8[-1]. */
    CHECK_OK(nvidia_clara_fastio_entry__element_type(note, &type));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_UINT8);
    const char *uid = "1.2.840.10008";
    const int64_t uid_len[1] = {(int64_t)strlen(uid)};
    CHECK_OK(nvidia_clara_fastio_entry__update_shape(note, index0, uid_len, 1));
    CHECK_OK(nvidia_clara_fastio_entry__map(note, &data));
    memcpy(data, uid, strlen(uid));
    CHECK_OK(nvidia_clara_fastio_entry__unmap(note));

    /* A round trip through the context, with the entries as the dependency edge. */
    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_context(payload, &ctx));
    nvidia_clara_fastio_alloc *a = NULL;
    CHECK_OK(nvidia_clara_fastio__create(ctx, 48, &a));
    const size_t dims[2] = {3, 4};
    CHECK_OK(nvidia_clara_fastio__set_type_and_dimensions(a, NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32,
                                                          dims, 2));
    CHECK_OK(nvidia_clara_fastio__map(a, NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE, &data));
    for (int i = 0; i < 12; i++) ((float *)data)[i] = (float)(100 + i);
    CHECK_OK(nvidia_clara_fastio__unmap(a));
    CHECK_OK(nvidia_clara_fastio__publish(ctx, a, "ctx-grid"));
    CHECK_OK(nvidia_clara_fastio__release(a));
    if (leak) {
        nvidia_clara_fastio_alloc *forgotten = NULL;
        CHECK_OK(nvidia_clara_fastio__create(ctx, 1 << 16, &forgotten));
    }
}

static void consume(nvidia_clara_payload *payload, int alone) {
    nvidia_clara_fastio_entry **inputs = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_input_entries(payload, &inputs));
    nvidia_clara_fastio_entry *grid = find(inputs, "grid");
    nvidia_clara_fastio_entry *slices = find(inputs, "slices");
    nvidia_clara_fastio_entry *note = find(inputs, "note");
    nvidia_clara_fastio_access access = -1;
    CHECK_OK(nvidia_clara_fastio_entry__access(grid, &access));
    CHECK(access == NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY);
    const size_t index1[1] = {1};
    const int64_t five[1] = {5};
    /* The context's own refusal, word for word as Rust and Python report it. */
    CHECK_FAILS(nvidia_clara_fastio_entry__update_shape(slices, index1, five, 1),
                NVIDIA_CLARA_RESULT_READ_ONLY,
                "nvidia_clara_fastio_entry__update_shape: FastIO entry \"slices\" is an input of "
                "this operator: it is read-only");
    CHECK_FAILS(nvidia_clara_fastio_entry__allocate(grid), NVIDIA_CLARA_RESULT_READ_ONLY,
                "FastIO entry \"grid\" is an input of this operator: it is read-only");
    void *data = NULL;
    CHECK_OK(nvidia_clara_fastio_entry__map(grid, &data));
    /* Mapped or not, an input is refused as read-only (not as busy). */
    CHECK_FAILS(nvidia_clara_fastio_entry__allocate(grid), NVIDIA_CLARA_RESULT_READ_ONLY,
                "FastIO entry \"grid\" is an input of this operator: it is read-only");
    for (int i = 0; i < 12; i++) CHECK(((const float *)data)[i] == (alone ? 0.0f : (float)i));
    CHECK_OK(nvidia_clara_fastio_entry__unmap(grid));
    if (alone) {
        /* Nobody produced the dynamic inputs. */
        CHECK(flag(nvidia_clara_fastio_entry__is_allocated, slices) == 0);
        CHECK_FAILS(nvidia_clara_fastio_entry__map(slices, &data), NVIDIA_CLARA_RESULT_NOT_FOUND,
                    "no memory yet");
        return;
    }
    const int64_t fixed[2] = {3, 5};
    check_shape(slices, 2, fixed);
    CHECK_OK(nvidia_clara_fastio_entry__map(slices, &data));
    for (int i = 0; i < 15; i++) CHECK(((const int32_t *)data)[i] == i * 10);
    CHECK_OK(nvidia_clara_fastio_entry__unmap(slices));
    size_t size = 0;
    CHECK_OK(nvidia_clara_fastio_entry__size(note, &size));
    CHECK(size == strlen("1.2.840.10008"));
    CHECK_OK(nvidia_clara_fastio_entry__map(note, &data));
    CHECK(memcmp(data, "1.2.840.10008", size) == 0);
    CHECK_OK(nvidia_clara_fastio_entry__unmap(note));

    nvidia_clara_fastio_context *ctx = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_context(payload, &ctx));
    nvidia_clara_fastio_alloc *b = NULL;
    CHECK_OK(nvidia_clara_fastio__get(ctx, "ctx-grid", &b));
    nvidia_clara_element_type type = -1;
    size_t dims[4];
    size_t count = 0;
    CHECK_OK(nvidia_clara_fastio__get_type_and_dimensions(b, &type, dims, 4, &count));
    CHECK(type == NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32 && count == 2 && dims[0] == 3 && dims[1] == 4);
    CHECK_OK(nvidia_clara_fastio__map(b, NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY, &data));
    for (int i = 0; i < 12; i++) CHECK(((const float *)data)[i] == (float)(100 + i));
    CHECK_OK(nvidia_clara_fastio__free(b));
    CHECK_FAILS(nvidia_clara_fastio__get(ctx, "ctx-grid", &b), NVIDIA_CLARA_RESULT_NOT_FOUND,
                "was freed");
}

static void notify(nvidia_clara_cpd *cpd, int code, const char *message) {
    (void)cpd;
    fprintf(stderr, "[%s] notification %d: %s\n", role, code, message);
}

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    if (strcmp(role, "producer") == 0) {
        produce(payload);
    } else {
        consume(payload, strcmp(role, "consumer-alone") == 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc >= 2);
    role = argv[1];
    leak = argc > 2 && strcmp(argv[2], "leak") == 0;
    nvidia_clara_cpd *cpd = NULL;
    CHECK_OK(nvidia_clara_cpd__create(notify, NULL, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, NULL, execute, NULL));
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd));
    CHECK_OK(nvidia_clara_cpd__release(cpd));
    printf("%s ok\n", role);
    return 0;
}
