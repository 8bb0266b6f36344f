/*
 * notify.c - telling systemd how the daemon is doing: the sd_notify(3)
 * protocol of a Type=notify service.
 *
 * What is sent, and when (daemon.c calls the notify_* functions at those
 * points):
 *   READY=1                 start-up is complete: the config is loaded,
 *                           the control socket bound, the jobs started;
 *   RELOADING=1 and         a reload begins (SIGHUP, `systemctl reload`,
 *   MONOTONIC_USEC=N        `jobrunctl reload`); N is CLOCK_MONOTONIC in
 *                           microseconds, which systemd 253 and later want
 *                           with it;
 *   READY=1                 the reload is over, applied or refused (systemd
 *                           shows the unit "reloading" until then);
 *   STOPPING=1              shutdown has begun (nothing but STATUS= and
 *                           WATCHDOG=1 follows it);
 *   STATUS=...              one line for `systemctl status`: jobs, active
 *                           runs, workers and the last error logged,
 *                           re-sent (only) when it changes, looked at once
 *                           a second and at every message above;
 *   WATCHDOG=1              every WATCHDOG_USEC/2 when the unit sets
 *                           WatchdogSec=, from a timer of the main event
 *                           loop: a loop that is stuck stops the pings and
 *                           systemd restarts the service, which is the point.
 *
 * The protocol is spoken by hand, as sd_notify(3) documents it (a stable
 * interface, meant to be reimplemented): one datagram per message, sent on
 * an AF_UNIX SOCK_DGRAM socket to the path in $NOTIFY_SOCKET ('@' first:
 * the abstract namespace), newline-separated VAR=VALUE lines.  The watchdog
 * is ours when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is our pid
 * (sd_watchdog_enabled(3)).  libsystemd is not linked for this: it would
 * add a datagram's worth of code and, with it, libgcrypt, liblzma,
 * libzstd, liblz4 and libcap, over 800 KiB of the resident memory of a
 * daemon that is meant to idle in less than 4 MiB (README, Performance).
 * When NOTIFY_SOCKET is unset (not started by systemd, -t, --once) nothing
 * is sent and no timer runs.
 *
 * The environment is left as it is (NOTIFY_SOCKET is read once, at
 * start-up).  So workers inherit it; systemd ignores what they might send
 * because the unit says NotifyAccess=main.  Our own socket is
 * close-on-exec: workers do not get it.
 *
 * The last error is whatever was last logged at LOG_ERR or worse, from any
 * thread (a log hook copies it under a lock); everything else here runs in
 * the main thread.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "jobrund.h"

#define NOTIFY_STATUS_MAX 512           /* bytes of STATUS= text */
#define NOTIFY_ERROR_MAX 300            /* bytes of the last error in it */
#define NOTIFY_STATUS_EVERY 1.0         /* seconds between STATUS checks */

static struct {
	bool enabled;                   /* NOTIFY_SOCKET was set */
	bool started;                   /* notify_ready ran once */
	bool stopping;
	void (*counter)(struct notify_counts *);
	struct loop_timer *watchdog, *status_timer;
	char status[NOTIFY_STATUS_MAX]; /* the last STATUS= sent */
	int last_errno;                 /* of the last failed send */
	int fd;                         /* what we send from */
	struct sockaddr_un addr;        /* $NOTIFY_SOCKET */
	socklen_t addrlen;
} notify;

/* Written by the log hook from any thread, read in the main thread. */
static pthread_mutex_t notify_error_lock = PTHREAD_MUTEX_INITIALIZER;
static char notify_error[NOTIFY_ERROR_MAX];
static char notify_error_time[32];

/* Resolve $NOTIFY_SOCKET into notify.addr and open the socket we send
 * from (close-on-exec: workers do not get it). */
static int
notify_open(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	size_t n = strlen(path);

	if ((path[0] != '/' && path[0] != '@') || n < 2 ||
	    n > sizeof notify.addr.sun_path) {
		log_msg(LOG_WARNING, "NOTIFY_SOCKET=%s: not a socket path jobrund can "
			"use (an absolute path or @abstract name): systemd will not hear "
			"from it", path);
		errno = EAFNOSUPPORT;
		return -1;
	}
	memset(&notify.addr, 0, sizeof notify.addr);
	notify.addr.sun_family = AF_UNIX;
	memcpy(notify.addr.sun_path, path, n);
	if (path[0] == '@')
		notify.addr.sun_path[0] = '\0';         /* abstract: no NUL after */
	notify.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	notify.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify.fd == -1) {
		log_warn("NOTIFY_SOCKET: socket");
		return -1;
	}
	return 0;
}

/* One datagram.  Never blocks the loop: a full queue drops the message
 * (systemd reads its socket promptly; the next STATUS or WATCHDOG follows). */
static int
notify_send(const char *msg)
{
	if (sendto(notify.fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL,
		   (const struct sockaddr *)&notify.addr, notify.addrlen) == -1)
		return -1;
	return 0;
}

/* Send MSG; a failure is logged once per errno value, not every second. */
static void
notify_msg(const char *msg)
{
	if (!notify.enabled)
		return;
	if (notify_send(msg) == 0) {
		notify.last_errno = 0;
		return;
	}
	if (errno != notify.last_errno)
		log_warn("cannot notify systemd (NOTIFY_SOCKET)");
	notify.last_errno = errno;
}

/* Called by log.c for every line logged, from any thread. */
static void
notify_log_hook(int priority, const char *line)
{
	struct tm tm;
	time_t now;
	char *p;

	if (priority > LOG_ERR)
		return;
	now = time(NULL);
	pthread_mutex_lock(&notify_error_lock);
	snprintf(notify_error, sizeof notify_error, "%s", line);
	/* STATUS= is one line of the message: no newline may end it early. */
	for (p = notify_error; *p != '\0'; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	if (localtime_r(&now, &tm) != NULL)
		strftime(notify_error_time, sizeof notify_error_time,
			 "%Y-%m-%d %H:%M:%S", &tm);
	pthread_mutex_unlock(&notify_error_lock);
}

/* The STATUS= line as it stands now, into BUF. */
static void
notify_status_text(char *buf, size_t len)
{
	struct notify_counts c = { 0 };
	size_t n;

	if (notify.counter != NULL)
		notify.counter(&c);
	n = (size_t)snprintf(buf, len, "%s%zu job%s, %zu active run%s, "
			     "%zu worker process%s, %zu worker thread%s",
			     notify.stopping ? "stopping: " : "",
			     c.jobs, c.jobs == 1 ? "" : "s",
			     c.runs, c.runs == 1 ? "" : "s",
			     c.processes, c.processes == 1 ? "" : "es",
			     c.threads, c.threads == 1 ? "" : "s");
	if (n >= len)
		return;
	pthread_mutex_lock(&notify_error_lock);
	if (notify_error[0] != '\0')
		snprintf(buf + n, len - n, "; last error (%s): %s",
			 notify_error_time, notify_error);
	pthread_mutex_unlock(&notify_error_lock);
}

/* Send PREFIX (may be NULL) with a STATUS= line: always when there is a
 * prefix, else only when the line changed. */
static void
notify_with_status(const char *prefix)
{
	char status[NOTIFY_STATUS_MAX], *msg;

	notify_status_text(status, sizeof status);
	if (prefix == NULL && strcmp(status, notify.status) == 0)
		return;
	memcpy(notify.status, status, sizeof notify.status);
	msg = xasprintf("%s%sSTATUS=%s", prefix ? prefix : "", prefix ? "\n" : "",
			status);
	notify_msg(msg);
	free(msg);
}

static void
notify_status_tick(void *arg)
{
	(void)arg;
	notify_with_status(NULL);
}

static void
notify_watchdog_tick(void *arg)
{
	(void)arg;
	notify_msg("WATCHDOG=1");
}

/* WATCHDOG_USEC in microseconds when the watchdog is ours, else 0. */
static uint64_t
notify_watchdog_usec(void)
{
	const char *v = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	unsigned long long usec;
	char *end;

	if (v == NULL || *v == '\0')
		return 0;
	errno = 0;
	usec = strtoull(v, &end, 10);
	if (errno != 0 || *end != '\0' || usec == 0)
		return 0;
	/* WATCHDOG_PID set and not ours: it was meant for our parent. */
	if (pid != NULL && *pid != '\0' && strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	return usec;
}

void
notify_init(void (*counter)(struct notify_counts *))
{
	const char *sock = getenv("NOTIFY_SOCKET");

	notify.counter = counter;
	log_set_hook(notify_log_hook);
	if (sock == NULL || *sock == '\0')
		return;
	if (notify_open() == -1)
		return;
	notify.enabled = true;
}

void
notify_ready(void)
{
	uint64_t usec;

	/* A load that ends during shutdown is no reason to say READY=1. */
	if (!notify.enabled || notify.stopping)
		return;
	notify_with_status("READY=1");
	if (notify.started)
		return;
	/* The first READY=1: the loop exists now, and -d has forked (so
	 * getpid() is the pid WATCHDOG_PID names, if any). */
	notify.started = true;
	notify.status_timer = loop_timer_add(NOTIFY_STATUS_EVERY, NOTIFY_STATUS_EVERY,
					     notify_status_tick, NULL);
	if ((usec = notify_watchdog_usec()) > 0) {
		double every = (double)usec / 2e6;

		log_info("systemd watchdog: %.3f s, pinging every %.3f s",
			 (double)usec / 1e6, every);
		notify.watchdog = loop_timer_add(every, every, notify_watchdog_tick, NULL);
	}
}

void
notify_reloading(void)
{
	struct timespec ts;
	char msg[80];

	if (!notify.enabled || notify.stopping)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)ts.tv_sec * 1000000ULL +
		 (unsigned long long)ts.tv_nsec / 1000ULL);
	notify_msg(msg);
}

void
notify_stopping(void)
{
	if (!notify.enabled)
		return;
	notify.stopping = true;
	notify_with_status("STOPPING=1");
}

void
notify_fini(void)
{
	loop_timer_remove(notify.watchdog);
	loop_timer_remove(notify.status_timer);
	notify.watchdog = notify.status_timer = NULL;
	if (notify.enabled)
		close(notify.fd);
	notify.enabled = false;
	/* The log hook stays: a thread stuck in a plugin may still log. */
}
