/* Disk entries of the payload (Clara's path variables), standalone, from Clara's
 * NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS, which the test sets to
 *   inputs:  "dicom:$DIR/in;:$DIR/in2"   outputs: "report:$DIR/out"
 * with DIR passed as argv[1]. */
#include "check.h"

static const char *dir;

static size_t count(nvidia_clara_payload_entry **entries) {
    size_t n = 0;
    while (entries[n] != NULL) n++;
    return n;
}

static void check_name_protocol(nvidia_clara_payload_entry *entry, const char *expected) {
    size_t len = 0;
    CHECK_FAILS(nvidia_clara_payload_entry__name(entry, NULL, 0, &len),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "are needed");
    CHECK(len == strlen(expected) + 1);
    char buffer[256];
    memset(buffer, 'x', sizeof buffer);
    size_t len2 = 0;
    CHECK_FAILS(nvidia_clara_payload_entry__name(entry, buffer, (int)len - 1, &len2),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "are needed");
    CHECK(len2 == len && buffer[0] == 'x'); /* nothing written */
    CHECK_OK(nvidia_clara_payload_entry__name(entry, buffer, (int)len, &len2));
    CHECK(len2 == len && strcmp(buffer, expected) == 0);
    CHECK_FAILS(nvidia_clara_payload_entry__name(entry, buffer, -5, &len2),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "holds 0 bytes");
    CHECK_FAILS(nvidia_clara_payload_entry__name(entry, buffer, (int)len, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`len_out` is NULL");
}

static void check_path(nvidia_clara_payload_entry *entry, const char *leaf) {
    char expected[1024];
    snprintf(expected, sizeof expected, "%s/%s", dir, leaf);
    char buffer[1024];
    size_t len = 0;
    CHECK_FAILS(nvidia_clara_payload_entry__path(entry, NULL, 0, &len),
                NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, "are needed");
    CHECK(len == strlen(expected) + 1);
    CHECK_OK(nvidia_clara_payload_entry__path(entry, buffer, (int)sizeof buffer, &len));
    CHECK(strcmp(buffer, expected) == 0);
}

static result execute(nvidia_clara_cpd *cpd, nvidia_clara_payload *payload) {
    (void)cpd;
    nvidia_clara_payload_entry **inputs = NULL, **again = NULL, **outputs = NULL;
    CHECK_OK(nvidia_clara_payload__input_entries(payload, &inputs));
    CHECK(count(inputs) == 2);
    CHECK_OK(nvidia_clara_payload__input_entries(payload, &again));
    CHECK(again == inputs && again[0] == inputs[0] && again[1] == inputs[1]);
    check_name_protocol(inputs[0], "dicom");
    check_name_protocol(inputs[1], ""); /* the empty name: len == 1 */
    check_path(inputs[0], "in");
    check_path(inputs[1], "in2");
    CHECK_OK(nvidia_clara_payload__output_entries(payload, &outputs));
    CHECK(count(outputs) == 1);
    check_name_protocol(outputs[0], "report");
    check_path(outputs[0], "out");
    nvidia_clara_fastio_entry **fastio = NULL;
    CHECK_OK(nvidia_clara_payload__fastio_input_entries(payload, &fastio));
    CHECK(fastio != NULL && fastio[0] == NULL); /* no pipeline: no FastIO entries */
    CHECK_FAILS(nvidia_clara_payload__input_entries(payload, NULL),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`entries_out` is NULL");
    CHECK_FAILS(nvidia_clara_payload__input_entries(NULL, &inputs),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, "`nvidia_clara_payload` is NULL");
    CHECK_FAILS(nvidia_clara_payload_entry__name((nvidia_clara_payload_entry *)payload, NULL, 0, NULL),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE, "as a nvidia_clara_payload_entry");
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    dir = argv[1];
    nvidia_clara_cpd *cpd = NULL;
    CHECK_OK(nvidia_clara_cpd__create(NULL, NULL, &cpd));
    CHECK_OK(nvidia_clara_cpd__start(cpd, NULL, execute, NULL));
    CHECK_OK(nvidia_clara_cpd__wait_for_completion(cpd));
    CHECK_OK(nvidia_clara_cpd__release(cpd));
    puts("payload entries ok");
    return 0;
}
