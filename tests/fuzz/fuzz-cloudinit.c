/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-cloudinit.c - libFuzzer target for the cloud-config generator (daemon/cloudinit-generator.c):
 * the YAML a user writes under coreos: etcd2:, converted into ETCD_* values and written out as a
 * drop-in's Environment= lines (to a memory stream here, not to a directory). The generator is a
 * program of its own: its source is compiled in, its main() renamed away. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int cloudinit_generator_main(int argc, char *argv[]);
#define main cloudinit_generator_main
#include "../../daemon/cloudinit-generator.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Conversion c = { .path = "fuzz.yaml", .public_ipv4 = "203.0.113.7", .private_ipv4 = "10.0.0.7" };
        char *out = NULL;
        size_t out_size = 0;
        FILE *f;

        if (size > 256 * 1024)
                return 0;
        if (convert(&c, (const char *) data, size) >= 0) {
                f = open_memstream(&out, &out_size);
                if (f) {
                        for (size_t i = 0; i < N_FIELDS; i++)
                                if (c.values[i] && write_value(f, i, c.values[i]) < 0)
                                        break;
                        fclose(f);
                }
                free(out);
        }
        conversion_done(&c);
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        /* The generator's errors are expected here: keep them out of the fuzzer's output. */
        log_set_max_level(LOG_CRIT);
        return 0;
}
