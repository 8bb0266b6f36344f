/*
 * decimal.h - 128-bit integers in decimal, for the plugins whose results
 * do not fit 64 bits (square of an int64, cpu's sums).  A header of
 * static functions: plugins are separate modules that share no code.
 */
#ifndef JOBRUND_PLUGINS_DECIMAL_H
#define JOBRUND_PLUGINS_DECIMAL_H

#include <stddef.h>
#include <stdint.h>

/* Write V in decimal at the end of BUF (LEN bytes, at least 40); returns
 * where the digits start. */
static inline char *
u128_to_dec(unsigned __int128 v, char *buf, size_t len)
{
	char *p = buf + len;

	*--p = '\0';
	/* 128-bit division is a library call: use it only for the digits
	 * above 64 bits, and plain 64-bit arithmetic for the rest. */
	while (v > UINT64_MAX) {
		*--p = (char)('0' + (int)(v % 10));
		v /= 10;
	}
	uint64_t low = (uint64_t)v;
	do {
		*--p = (char)('0' + (int)(low % 10));
		low /= 10;
	} while (low != 0);
	return p;
}

#endif /* JOBRUND_PLUGINS_DECIMAL_H */
