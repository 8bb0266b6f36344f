/*
 * util.c - small helpers every part of jobrund uses: allocation that
 * aborts on exhaustion (a daemon that cannot allocate a few bytes cannot
 * do anything useful, and pretending otherwise spreads NULL checks over
 * every line), monotonic time, error lists, descriptor flags and
 * passing descriptors over a UNIX socket.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "jobrund.h"

static void JR_NORETURN
out_of_memory(size_t n)
{
	fprintf(stderr, "jobrund: out of memory allocating %zu bytes\n", n);
	abort();
}

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		out_of_memory(n);
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		out_of_memory(n * size);
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		out_of_memory(n);
	return q;
}

char *
xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		out_of_memory(strlen(s) + 1);
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		out_of_memory(strlen(fmt));
	va_end(ap);
	return s;
}

double
mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts_to_s(&ts);
}

void
errlist_add(struct errlist *el, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		out_of_memory(strlen(fmt));
	va_end(ap);
	if (el->n == el->cap) {
		el->cap = el->cap ? el->cap * 2 : 8;
		el->msgs = xrealloc(el->msgs, el->cap * sizeof *el->msgs);
	}
	el->msgs[el->n++] = s;
}

void
errlist_free(struct errlist *el)
{
	for (size_t i = 0; i < el->n; i++)
		free(el->msgs[i]);
	free(el->msgs);
	el->msgs = NULL;
	el->n = el->cap = 0;
}

void
strv_free(char **v)
{
	for (char **e = v; e && *e; e++)
		free(*e);
	free(v);
}

/* Descriptors travel in one SCM_RIGHTS message, at most FDS_MAX. */
#define FDS_MAX 4

ssize_t
send_with_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
	      int flags)
{
	struct iovec iov = { (void *)(uintptr_t)buf, len };
	union {
		char buf[CMSG_SPACE(FDS_MAX * sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds > FDS_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (nfds > 0) {
		struct cmsghdr *c;

		memset(&cm, 0, sizeof cm);
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
	while (n == -1 && errno == EINTR);
	return n;
}

ssize_t
recv_with_fds(int sock, void *buf, size_t size, int *fds, size_t maxfds,
	      size_t *nfds, int *msg_flags)
{
	struct iovec iov = { buf, size };
	union {
		char buf[CMSG_SPACE(FDS_MAX * sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cm.buf, .msg_controllen = sizeof cm.buf };
	ssize_t n;

	*nfds = 0;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			if (*nfds < maxfds)
				fds[(*nfds)++] = fd;
			else
				close(fd);
		}
	}
	*msg_flags = mh.msg_flags;
	return n;
}

int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1)
		return -1;
	return 0;
}
