// SPDX-License-Identifier: Apache-2.0
/*
 * standalone_main.c - drives fuzz_c_api.c where libFuzzer is not available (GCC): runs
 * the files named on the command line once each, then random inputs (random lengths,
 * random bytes, and mutations of the previous input) for the given number of seconds.
 *
 *     fuzz_c_api_standalone [-seconds=S] [-seed=K] [FILE...]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t state;
static uint64_t next(void) { /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    double seconds = 10.0;
    state = 0x9E3779B97F4A7C15ull;
    for (int i = 1; i < argc; ++i) {
        if (strncmp(argv[i], "-seconds=", 9) == 0) {
            seconds = atof(argv[i] + 9);
        } else if (strncmp(argv[i], "-seed=", 6) == 0) {
            state = strtoull(argv[i] + 6, NULL, 10) | 1;
        } else {
            FILE *f = fopen(argv[i], "rb");
            if (!f) {
                perror(argv[i]);
                return 2;
            }
            static uint8_t file[1 << 16];
            const size_t n = fread(file, 1, sizeof file, f);
            fclose(f);
            LLVMFuzzerTestOneInput(file, n);
        }
    }
    uint8_t buf[1024];
    size_t len = 0;
    long runs = 0;
    const double end = now() + seconds;
    while (now() < end) {
        for (int k = 0; k < 64; ++k, ++runs) {
            if (len == 0 || next() % 4 == 0) { /* fresh input */
                len = (size_t)(next() % sizeof buf);
                for (size_t i = 0; i < len; ++i) buf[i] = (uint8_t)next();
            } else { /* mutate a few bytes of the last one */
                for (int m = 0, count = 1 + (int)(next() % 4); m < count; ++m)
                    buf[next() % len] = (uint8_t)next();
            }
            LLVMFuzzerTestOneInput(buf, len);
        }
    }
    printf("fuzz_c_api: %ld inputs in %.0f s, no failure\n", runs, seconds);
    return 0;
}
