/* SPDX-License-Identifier: MIT */
/*
 * fuzz_replay.h - replaying fuzz inputs without libFuzzer.
 *
 * Each bench/fuzz_*.c target also builds as a plain program (the top
 * Makefile's bench rule, without -DFT_LIBFUZZER) whose main() replays the
 * files named on its command line, so that a crash found by the fuzzer can
 * be reproduced under the gcc sanitizer build.  Include after the target's
 * LLVMFuzzerTestOneInput.
 */
#ifndef FUZZ_REPLAY_H
#define FUZZ_REPLAY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Run the file at `path` through the target, after printing its name.
 * Returns 0, or 2 if the file cannot be read (the reason on stderr). */
static inline int fuzz_replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET)) {
		perror(path);
		if (f)
			fclose(f);
		return 2;
	}
	buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		perror(path);
		free(buf);
		fclose(f);
		return 2;
	}
	fclose(f);
	printf("%s:\n", path);
	fflush(stdout);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return 0;
}

#endif /* FUZZ_REPLAY_H */
