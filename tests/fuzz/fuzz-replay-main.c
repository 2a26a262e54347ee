/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-replay-main.c - the main() of a fuzz target in the default build (no libFuzzer): runs
 * LLVMFuzzerTestOneInput() once over every file named on the command line, or in a directory named
 * there (the seed corpus, crash reproducers), in name order. Exit status 0 if all ran. */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path) {
        FILE *f = fopen(path, "rb");
        uint8_t *buf = NULL;
        size_t n = 0, alloc = 0;

        if (!f) {
                perror(path);
                return -1;
        }
        for (;;) {
                if (n == alloc) {
                        uint8_t *p = realloc(buf, alloc ? alloc * 2 : 4096);

                        if (!p) {
                                free(buf);
                                fclose(f);
                                return -1;
                        }
                        buf = p;
                        alloc = alloc ? alloc * 2 : 4096;
                }
                size_t k = fread(buf + n, 1, alloc - n, f);
                if (k == 0)
                        break;
                n += k;
        }
        fclose(f);
        /* An exact-size copy, so that ASan catches a read one past the end. */
        uint8_t *exact = malloc(n ? n : 1);
        if (!exact) {
                free(buf);
                return -1;
        }
        memcpy(exact, buf, n);
        free(buf);
        printf("# %s (%zu bytes)\n", path, n);
        fflush(stdout);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
        return 0;
}

static int cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int run_dir(const char *dir, unsigned *count) {
        DIR *d = opendir(dir);
        struct dirent *de;
        char **names = NULL;
        size_t n = 0;
        int r = 0;

        if (!d) {
                perror(dir);
                return -1;
        }
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char **p = realloc(names, (n + 1) * sizeof(*names));
                if (!p) {
                        r = -1;
                        break;
                }
                names = p;
                if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0) {
                        r = -1;
                        break;
                }
                n++;
        }
        closedir(d);
        if (n > 0)
                qsort(names, n, sizeof(*names), cmp);
        for (size_t i = 0; i < n; i++) {
                struct stat st;

                if (r == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
                        if (run_file(names[i]) < 0)
                                r = -1;
                        else
                                (*count)++;
                }
                free(names[i]);
        }
        free(names);
        return r;
}

int main(int argc, char *argv[]) {
        unsigned count = 0;

        if (LLVMFuzzerInitialize)
                LLVMFuzzerInitialize(&argc, &argv);
        for (int i = 1; i < argc; i++) {
                struct stat st;

                if (stat(argv[i], &st) < 0) {
                        perror(argv[i]);
                        return 1;
                }
                if (S_ISDIR(st.st_mode) ? run_dir(argv[i], &count) < 0 : run_file(argv[i]) < 0)
                        return 1;
                if (!S_ISDIR(st.st_mode))
                        count++;
        }
        printf("# replayed %u inputs\n", count);
        return count > 0 ? 0 : 1;
}
