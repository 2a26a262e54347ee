/* SPDX-License-Identifier: Apache-2.0 */
/* replay-main.c - runs a libFuzzer target over files and directories of inputs (the "fuzz-replay" suite
 * of the default build, where no libFuzzer runtime is linked). */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
        FILE *f = fopen(path, "rb");
        uint8_t *buf = NULL;
        size_t size = 0, alloc = 0;

        if (!f) {
                perror(path);
                return -1;
        }
        for (;;) {
                if (size == alloc) {
                        uint8_t *n;

                        alloc = alloc ? alloc * 2 : 4096;
                        n = realloc(buf, alloc);
                        if (!n) {
                                free(buf);
                                fclose(f);
                                return -1;
                        }
                        buf = n;
                }
                size_t k = fread(buf + size, 1, alloc - size, f);
                if (k == 0)
                        break;
                size += k;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, size);
        free(buf);
        return 1;
}

static int replay(const char *path) {
        struct stat st;
        DIR *d;
        struct dirent *de;
        int n = 0;

        if (stat(path, &st) < 0) {
                perror(path);
                return -1;
        }
        if (!S_ISDIR(st.st_mode))
                return replay_file(path);
        d = opendir(path);
        if (!d) {
                perror(path);
                return -1;
        }
        while ((de = readdir(d))) {
                char sub[4096];
                int r;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
                r = replay(sub);
                if (r < 0) {
                        closedir(d);
                        return r;
                }
                n += r;
        }
        closedir(d);
        return n;
}

int main(int argc, char **argv) {
        int total = 0;

        /* The empty input first: every target must take it. */
        LLVMFuzzerTestOneInput((const uint8_t *) "", 0);
        for (int i = 1; i < argc; i++) {
                int r = replay(argv[i]);
                if (r < 0)
                        return EXIT_FAILURE;
                total += r;
        }
        printf("replayed %d inputs\n", total);
        return total > 0 || argc == 1 ? EXIT_SUCCESS : EXIT_FAILURE;
}
