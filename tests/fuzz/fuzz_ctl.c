/*
 * fuzz_ctl.c - libFuzzer target: the control protocol's request decoder
 * (ctlproto.c), fed what a client could send on one connection: the
 * input is cut into request lines the way ctl.c cuts its buffer, and each
 * line is decoded.  A request that decodes must survive a round trip
 * through jansson's encoder with the same command.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jobrund.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_request(const char *line, size_t len)
{
	const char *cmd, *cmd2;
	char err[512];
	json_t *req, *req2;
	char *text;
	int rc;

	rc = ctlproto_parse(line, len, &req, &cmd, err, sizeof err);
	if (rc != 0) {
		if ((rc != CTLPROTO_MALFORMED && rc != CTLPROTO_INVALID) ||
		    req != NULL || err[0] == '\0')
			abort();
		return;
	}
	if (req == NULL || cmd == NULL)
		abort();
	if ((text = json_dumps(req, JSON_COMPACT)) == NULL)
		abort();
	if (ctlproto_parse(text, strlen(text), &req2, &cmd2, err, sizeof err) != 0 ||
	    strcmp(cmd, cmd2) != 0)
		abort();
	json_decref(req2);
	free(text);
	json_decref(req);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A connection's buffer holds at most CTL_MAX_REQUEST + 4096 bytes
	 * (ctl_read), and is not NUL-terminated: copy without one. */
	char *buf = xmalloc(size ? size : 1);
	size_t off = 0;

	memcpy(buf, data, size);
	while (off < size) {
		size_t len = 0, used = 0;
		int rc = ctlproto_next_line(buf + off, size - off, &len, &used);

		if (rc != 1)
			break;          /* incomplete, or too long: closed */
		if (used == 0 || used > size - off || len >= used)
			abort();
		if (!ctlproto_blank(buf + off, len))
			fuzz_request(buf + off, len);
		off += used;
	}
	free(buf);
	return 0;
}
