/*
 * fuzz_proto.c - libFuzzer target: the worker protocol's decoder, both
 * ends' view of it: a byte stream cut into frames by pconn_read and
 * pconn_next, each frame decoded by the proto_get_* of its type.
 *
 * The first input byte sets how many bytes at a time reach the reading
 * end of a socketpair (1 to 256 times 64), so that frames arrive split at
 * every place.  A frame that decodes is encoded again with proto_put_*;
 * that frame must decode, and encode to the same bytes (the decoders
 * accept only what the encoders write, up to a normalised flag).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "jobrund.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decode a frame of TYPE (its payload P, LEN bytes) and, when it is
 * valid, encode it again into OUT; false when it does not decode (or
 * the type is unknown: the daemon and the worker refuse it). */
static bool
reencode(uint8_t type, const uint8_t *p, size_t len, struct pbuf *out)
{
	switch (type) {
	case MSG_HELLO: {
		struct msg_hello m;
		if (proto_get_hello(p, len, &m) == -1)
			return false;
		proto_put_hello(out, &m);
		proto_hello_free(&m);
		return true;
	}
	case MSG_READY: {
		struct msg_ready m;
		if (proto_get_ready(p, len, &m) == -1)
			return false;
		proto_put_ready(out, &m);
		return true;
	}
	case MSG_FAIL: {
		struct msg_fail m;
		if (proto_get_fail(p, len, &m) == -1)
			return false;
		proto_put_fail(out, &m);
		proto_fail_free(&m);
		return true;
	}
	case MSG_TASKS: {
		struct msg_tasks m;
		if (proto_get_tasks(p, len, &m) == -1)
			return false;
		proto_put_tasks(out, &m);
		proto_tasks_free(&m);
		return true;
	}
	case MSG_ACK: {
		struct msg_ack m;
		if (proto_get_ack(p, len, &m) == -1)
			return false;
		proto_put_ack(out, &m);
		return true;
	}
	case MSG_CANCEL: {
		struct msg_cancel m;
		if (proto_get_cancel(p, len, &m) == -1)
			return false;
		proto_put_cancel(out, &m);
		return true;
	}
	case MSG_RESULT: {
		struct msg_result m;
		if (proto_get_result(p, len, &m) == -1)
			return false;
		proto_put_result(out, &m);
		return true;
	}
	case MSG_LOG: {
		struct msg_log m;
		if (proto_get_log(p, len, &m) == -1)
			return false;
		proto_put_log(out, &m);
		proto_log_free(&m);
		return true;
	}
	case MSG_SPAWN: {
		struct msg_spawn m;
		if (proto_get_spawn(p, len, &m) == -1)
			return false;
		proto_put_spawn(out, &m);
		proto_spawn_free(&m);
		return true;
	}
	case MSG_SPAWNED: {
		struct msg_spawned m;
		if (proto_get_spawned(p, len, &m) == -1)
			return false;
		proto_put_spawned(out, &m);
		return true;
	}
	default:
		return false;
	}
}

/* Decode one frame; when it is valid, its encoding must be one whole
 * frame of TYPE that decodes again and encodes to the same bytes. */
static void
fuzz_frame(uint8_t type, const uint8_t *p, size_t len)
{
	struct pbuf first = { 0 }, again = { 0 };
	uint32_t flen;

	if (!reencode(type, p, len, &first)) {
		pbuf_free(&first);
		return;
	}
	if (first.len < 5)
		abort();
	flen = (uint32_t)first.data[0] | (uint32_t)first.data[1] << 8 |
	       (uint32_t)first.data[2] << 16 | (uint32_t)first.data[3] << 24;
	if (flen != first.len - 4 || first.data[4] != type)
		abort();
	if (!reencode(type, first.data + 5, first.len - 5, &again) ||
	    again.len != first.len || memcmp(again.data, first.data, again.len) != 0)
		abort();
	pbuf_free(&first);
	pbuf_free(&again);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pconn c;
	size_t chunk, off = 0;
	bool corrupt = false;
	int fds[2];

	if (size < 1)
		return 0;
	chunk = ((size_t)data[0] + 1) * 64;
	data++;
	size--;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1)
		abort();
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	pconn_init(&c, fds[1]);
	if (size == 0)
		shutdown(fds[0], SHUT_WR);
	while (!corrupt) {
		const uint8_t *payload;
		uint8_t type;
		size_t len;
		ssize_t n;
		int rc;

		if (off < size) {
			size_t k = size - off < chunk ? size - off : chunk;

			if ((n = write(fds[0], data + off, k)) == -1 && errno != EAGAIN)
				abort();
			if (n > 0)
				off += (size_t)n;
			if (off == size)
				shutdown(fds[0], SHUT_WR);
		}
		n = pconn_read(&c);
		if (n == 0)
			break;          /* EOF: what is left is a partial frame */
		if (n < 0 && errno != EAGAIN)
			abort();
		while ((rc = pconn_next(&c, &type, &payload, &len)) == 1)
			fuzz_frame(type, payload, len);
		if (rc == -1) {
			if (errno != EPROTO && errno != EMSGSIZE)
				abort();
			corrupt = true;
		}
	}
	pconn_free(&c);
	close(fds[0]);
	close(fds[1]);
	return 0;
}
