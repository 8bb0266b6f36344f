/*
 * log.c - jobrund's log: syslog(3) with ident "jobrund", LOG_PID and
 * facility daemon, plus an optional copy of each line on stderr (-e, and
 * always for the worker when the daemon copies).
 *
 * log_warn adds strerror(errno), log_warnx does not; fatal/fatalx log and
 * exit(1).  Lines below the configured level are dropped before they are
 * formatted.  Safe to call from any thread: syslog(3) and one fprintf per
 * line are both thread-safe.  A hook (log_set_hook, set once before threads
 * start) sees every line logged, from whatever thread logged it.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

static bool log_to_stderr;
static int log_level = LOG_INFO;
static const char *log_ident = "jobrund";
static void (*log_hook)(int priority, const char *line);

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
	[LOG_ERR] = "err", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void
log_init(const char *ident, bool to_stderr, int level)
{
	log_ident = ident;
	log_to_stderr = to_stderr;
	log_level = level;
	openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_set_hook(void (*hook)(int priority, const char *line))
{
	log_hook = hook;
}

void
log_set_level(int level)
{
	log_level = level;
}

int
log_get_level(void)
{
	return log_level;
}

bool
log_get_stderr(void)
{
	return log_to_stderr;
}

bool
log_enabled(int priority)
{
	return priority <= log_level;
}

int
log_level_from_name(const char *name)
{
	if (strcasecmp(name, "error") == 0)
		return LOG_ERR;
	for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
		if (strcasecmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

const char *
log_level_name(int level)
{
	if (level < 0 || level > LOG_DEBUG)
		return "?";
	return level_names[level];
}

void
log_vmsg(int priority, const char *fmt, va_list ap)
{
	char line[4096];
	int saved = errno;

	if (!log_enabled(priority))
		return;
	vsnprintf(line, sizeof line, fmt, ap);
	syslog(priority, "%s", line);
	if (log_hook != NULL)
		log_hook(priority, line);
	if (log_to_stderr) {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		fprintf(stderr, "%02d:%02d:%02d.%03ld %s[%ld] %s: %s\n",
			tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
			log_ident, (long)getpid(), level_names[priority], line);
	}
	errno = saved;
}

void
log_msg(int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(priority, fmt, ap);
	va_end(ap);
}

static void
log_with_errno(int priority, int err, const char *fmt, va_list ap)
{
	char msg[3072];

	if (!log_enabled(priority))
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	log_msg(priority, "%s: %s", msg, strerror(err));
}

void
log_warn(const char *fmt, ...)
{
	va_list ap;
	int err = errno;

	va_start(ap, fmt);
	log_with_errno(LOG_WARNING, err, fmt, ap);
	va_end(ap);
	errno = err;
}

void
log_warnx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_WARNING, fmt, ap);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_INFO, fmt, ap);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	if (!log_enabled(LOG_DEBUG))
		return;
	va_start(ap, fmt);
	log_vmsg(LOG_DEBUG, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;
	int err = errno;

	va_start(ap, fmt);
	log_with_errno(LOG_ERR, err, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_ERR, fmt, ap);
	va_end(ap);
	exit(1);
}
