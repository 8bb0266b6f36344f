/*
 * ctlproto.c - decoding the control protocol's requests (ctl.c describes
 * the protocol): cutting what a client sends into request lines, and
 * checking that a line is a request this version speaks.
 *
 * These are pure functions, apart from ctl.c's state and any socket, so
 * that the decoder a local user reaches is tested and fuzzed on its own
 * (tests/fuzz/fuzz_ctl.c).  What a command does with its arguments is
 * ctl.c's business: it knows the commands.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "jobrund.h"

int
ctlproto_next_line(const char *buf, size_t len, size_t *linelen, size_t *used)
{
	const char *nl = memchr(buf, '\n', len);
	size_t n;

	if (nl == NULL)
		return len > CTL_MAX_REQUEST ? -1 : 0;
	n = (size_t)(nl - buf);
	if (n > CTL_MAX_REQUEST)
		return -1;      /* complete, but too long all the same */
	*used = n + 1;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	*linelen = n;
	return 1;
}

bool
ctlproto_blank(const char *line, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
			return false;
	return true;
}

int
ctlproto_parse(const char *line, size_t len, struct json_t **reqp,
	       const char **cmd, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *req, *v;

	*reqp = NULL;
	*cmd = NULL;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL) {
		snprintf(err, errlen, "malformed request: %s (column %d)", jerr.text,
			 jerr.column);
		return CTLPROTO_MALFORMED;
	}
	if (!json_is_object(req)) {
		snprintf(err, errlen, "malformed request: not a JSON object");
		json_decref(req);
		return CTLPROTO_MALFORMED;
	}
	v = json_object_get(req, "v");
	if (!json_is_integer(v)) {
		snprintf(err, errlen, "malformed request: no protocol version (\"v\")");
		json_decref(req);
		return CTLPROTO_INVALID;
	}
	if (json_integer_value(v) != CTL_PROTO_VERSION) {
		snprintf(err, errlen, "protocol version %" JSON_INTEGER_FORMAT " is not "
			 "supported: this jobrund speaks version %d",
			 json_integer_value(v), CTL_PROTO_VERSION);
		json_decref(req);
		return CTLPROTO_INVALID;
	}
	if ((*cmd = json_string_value(json_object_get(req, "cmd"))) == NULL) {
		snprintf(err, errlen, "malformed request: no command (\"cmd\")");
		json_decref(req);
		return CTLPROTO_INVALID;
	}
	*reqp = req;
	return 0;
}
