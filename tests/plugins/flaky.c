/*
 * flaky.c - a test plugin that fails a given number of times, then
 * succeeds: for retries.  Its input is "PATH:N[:HOW]": each task adds one
 * to the counter in file PATH (created when missing) and, while the count
 * is N or less, fails the way HOW says: "fail" (the default: an error,
 * status failed), "crash" (_exit(3), status crashed: process mode only),
 * "sleep" (sleep until cancelled or timed out: status timeout with a
 * job timeout).  Past N it outputs "ok after COUNT".  Each attempt also
 * appends its CLOCK_MONOTONIC time to PATH.times, so that tests can check
 * the delays between attempts.  Thread-safe: the counter file is locked.
 */
#include "config.h"

#include <sys/file.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobrund/plugin.h"

/* Add one to the counter in PATH; the new count, or -1. */
static long
bump(const char *path)
{
	char buf[32] = "", tpath[PATH_MAX];
	struct timespec now;
	long n = -1;
	ssize_t len;
	FILE *fp;
	int fd;

	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) == -1)
		return -1;
	if (flock(fd, LOCK_EX) == -1)
		goto out;
	if ((len = pread(fd, buf, sizeof buf - 1, 0)) < 0)
		goto out;
	buf[len] = '\0';
	n = strtol(buf, NULL, 10) + 1;
	len = snprintf(buf, sizeof buf, "%ld\n", n);
	if (ftruncate(fd, 0) == -1 || pwrite(fd, buf, (size_t)len, 0) != len) {
		n = -1;
		goto out;
	}
	if ((size_t)snprintf(tpath, sizeof tpath, "%.4000s.times", path) >= sizeof tpath)
		goto out;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((fp = fopen(tpath, "ae")) != NULL) {
		fprintf(fp, "%lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
		fclose(fp);
	}
out:
	close(fd);
	return n;
}

static int
flaky_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);
	char path[PATH_MAX], how[16] = "fail";
	const char *colon;
	long count, limit;
	char *end;

	(void)state;
	if (in == NULL || (colon = strchr(in, ':')) == NULL ||
	    (size_t)(colon - in) >= sizeof path) {
		host->task_error(task, "flaky: input must be PATH:N[:HOW]");
		return EINVAL;
	}
	memcpy(path, in, (size_t)(colon - in));
	path[colon - in] = '\0';
	limit = strtol(colon + 1, &end, 10);
	if (*end == ':')
		snprintf(how, sizeof how, "%s", end + 1);
	if ((count = bump(path)) < 0) {
		host->task_error(task, "flaky: %s: %s", path, strerror(errno));
		return EIO;
	}
	if (count > limit)
		return host->task_printf(task, "ok after %ld", count) == 0 ? 0 : EFBIG;
	if (strcmp(how, "crash") == 0)
		_exit(3);
	if (strcmp(how, "sleep") == 0) {
		while (!host->task_cancelled(task))
			usleep(10000);
		host->task_error(task, "flaky: attempt %ld stopped", count);
		return ECANCELED;
	}
	host->task_error(task, "flaky: attempt %ld of %ld fails", count, limit);
	return EAGAIN;
}

JR_PLUGIN_DEFINE(
	.name = "flaky",
	.version = "1.0",
	.description = "fails N times, then succeeds (for retries)",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.run = flaky_run,
);
