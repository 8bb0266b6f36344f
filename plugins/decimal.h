/*
 * decimal.h - 128-bit integers in decimal, for the plugins whose results
 * do not fit 64 bits (square of an int64, cpu's sums).  A header of
 * static functions: plugins are separate modules that share no code.
 */
#ifndef JOBRUND_PLUGINS_DECIMAL_H
#define JOBRUND_PLUGINS_DECIMAL_H

#include <stddef.h>

/* Write V in decimal at the end of BUF (LEN bytes, at least 40); returns
 * where the digits start. */
static inline char *
u128_to_dec(unsigned __int128 v, char *buf, size_t len)
{
	char *p = buf + len;

	*--p = '\0';
	do {
		*--p = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v != 0);
	return p;
}

#endif /* JOBRUND_PLUGINS_DECIMAL_H */
