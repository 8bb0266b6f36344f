/*
 * duration.c - durations and sizes as people write them in the config.
 *
 * Durations: a number of
 * seconds ("30", "1.5") or numbers with units ("500ms", "5s", "2m", "1h",
 * "1d"), which may be chained from the largest unit down ("1h30m",
 * "1m30.5s").
 *
 * The grammar is deliberately small: digits with an optional fraction, no
 * sign, no exponent, no spaces, each unit at most once and in decreasing
 * order.  strtod alone would accept "inf", "nan", "0x1p4" and " 5", none of
 * which anyone means as a timeout.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jobrund.h"

/* Longer than any sane timeout or interval; beyond it is a typo. */
#define DURATION_MAX (10.0 * 365 * 86400)

static const struct {
	const char *name;
	double seconds;
} duration_units[] = {          /* in decreasing order */
	{ "d", 86400 },
	{ "h", 3600 },
	{ "m", 60 },
	{ "s", 1 },
	{ "ms", 0.001 },
};
#define NUNITS (sizeof duration_units / sizeof duration_units[0])

/* Read "DIGITS[.DIGITS]" or ".DIGITS" at *P into *V and advance *P. */
static int
duration_number(const char **p, double *v)
{
	const char *s = *p, *start = *p;
	char buf[64];
	size_t ndigits = 0, len;

	while (*s >= '0' && *s <= '9') {
		s++;
		ndigits++;
	}
	if (*s == '.') {
		s++;
		while (*s >= '0' && *s <= '9') {
			s++;
			ndigits++;
		}
	}
	if (ndigits == 0)
		return -1;
	len = (size_t)(s - start);
	if (len >= sizeof buf) {
		/* So many digits can only be out of range or junk zeros:
		 * let strtod on the whole tail decide, below. */
		errno = 0;
		*v = strtod(start, NULL);
	} else {
		memcpy(buf, start, len);
		buf[len] = '\0';
		errno = 0;
		*v = strtod(buf, NULL);
	}
	if (errno == ERANGE && *v != 0)
		*v = DURATION_MAX * 2;  /* reported as ERANGE by the caller */
	*p = s;
	return 0;
}

int
duration_parse(const char *text, double *seconds)
{
	const char *p = text;
	size_t next_unit = 0, nparts = 0;
	double total = 0, v;
	bool negative = false;

	if (text == NULL || *text == '\0')
		goto invalid;
	if (*p == '-') {
		/* Parse the rest so that "-junk" is EINVAL, "-5s" ERANGE. */
		negative = true;
		p++;
	}
	while (*p != '\0') {
		const char *u;
		size_t ulen, i;

		if (duration_number(&p, &v) == -1)
			goto invalid;
		u = p;
		while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
			p++;
		ulen = (size_t)(p - u);
		if (ulen == 0) {
			/* A bare number is seconds, but only on its own:
			 * "1m30" is more likely a mistake than 1m30s. */
			if (nparts > 0 || *p != '\0')
				goto invalid;
			total = v;
			nparts++;
			break;
		}
		for (i = next_unit; i < NUNITS; i++) {
			if (strlen(duration_units[i].name) == ulen &&
			    strncmp(duration_units[i].name, u, ulen) == 0)
				break;
		}
		if (i == NUNITS)
			goto invalid;   /* unknown, repeated or out of order */
		total += v * duration_units[i].seconds;
		next_unit = i + 1;
		nparts++;
	}
	if (nparts == 0)
		goto invalid;
	if (negative) {
		errno = ERANGE;
		return -1;
	}
	if (total > DURATION_MAX) {
		errno = ERANGE;
		return -1;
	}
	*seconds = total;
	return 0;

invalid:
	errno = EINVAL;
	return -1;
}

/*
 * Sizes: "65536", "64K", "512M", "1.5G", "2GiB", "64KB".  Units are powers
 * of 1024 (memory limits are pages, not marketing megabytes).  The same
 * small grammar: digits, an optional fraction, one unit.
 */
int
size_parse(const char *text, uint64_t *bytes)
{
	static const struct { char unit; double mult; } units[] = {
		{ 'K', 1024.0 }, { 'M', 1048576.0 }, { 'G', 1073741824.0 },
		{ 'T', 1099511627776.0 },
	};
	const char *p = text;
	double v, mult = 1;

	if (text == NULL || *text == '\0') {
		errno = EINVAL;
		return -1;
	}
	if (duration_number(&p, &v) == -1) {
		errno = EINVAL;
		return -1;
	}
	if (*p != '\0') {
		size_t i;
		char u = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);

		for (i = 0; i < sizeof units / sizeof units[0]; i++)
			if (units[i].unit == u)
				break;
		if (i == sizeof units / sizeof units[0]) {
			errno = EINVAL;
			return -1;
		}
		mult = units[i].mult;
		p++;
		if (strcmp(p, "B") == 0 || strcmp(p, "iB") == 0 || strcmp(p, "b") == 0)
			p += strlen(p);
		if (*p != '\0') {
			errno = EINVAL;
			return -1;
		}
	}
	v *= mult;
	/* Exactly 2^64 rounds to this double; anything at or past it is out. */
	if (v >= 18446744073709551616.0) {
		errno = ERANGE;
		return -1;
	}
	*bytes = (uint64_t)v;
	return 0;
}
