/*
 * cron.c - 5-field cron expressions: parsing them, and finding the next
 * instant one fires in a given time zone.
 *
 * Syntax: "minute hour day-of-month month day-of-week", each field a
 * comma-separated list of `*`, N, A-B, `*`/S, A-B/S and A/S (A to the
 * field's maximum, step S); month names jan..dec and weekday names
 * sun..sat in any case; weekday 7 is Sunday.  As in Vixie cron, when both
 * day fields are restricted (neither starts with `*`) a day matches if
 * EITHER matches; otherwise both must.  Macros: @yearly (@annually),
 * @monthly, @weekly, @daily (@midnight), @hourly.
 *
 * Time zones.  cron_next_fire reads the zone itself (the TZif file under
 * $TZDIR or /usr/share/zoneinfo, including its POSIX-rule footer for far
 * future years, or a POSIX TZ string such as "EST5EDT,M3.2.0,M11.1.0")
 * and does all calendar arithmetic itself.  The libc route would mean
 * setenv("TZ") + tzset() + mktime(): that changes the environment under
 * every other thread (plugins calling getenv or localtime included), and
 * mktime's handling of nonexistent local times is unspecified anyway.  So
 * this file never touches TZ, holds no locks and no static state: it is
 * reentrant.  NULL means the process's local zone, read the way glibc
 * reads it ($TZ, else /etc/localtime, UTC when neither is usable).  Leap
 * seconds ("right/" zones) are ignored.
 *
 * Daylight saving time.  A schedule names wall-clock times; two kinds of
 * day break the one-to-one mapping between wall clock and real time:
 *
 * - Fixed-hour schedules (the hour field does not start with `*`, e.g.
 *   "30 2 * * *", @daily): a wall time that does not exist because the
 *   clocks jumped forward (02:30 while 02:00 -> 03:00) fires ONCE, at the
 *   first real instant after the gap (03:00 new time), however many of its
 *   times fell into the gap.  A wall time that occurs twice because the
 *   clocks went back (01:30 while 02:00 -> 01:00) fires ONCE, at its first
 *   occurrence.  A daily job thus runs exactly once every day.
 *
 * - Interval schedules (the hour field starts with `*`: "*\/15 * * * *",
 *   "0 * * * *", @hourly): these follow the clock as it is read, like
 *   cronie does.  They fire in both passes of a repeated hour and have
 *   nothing to fire for in a skipped one, so an hourly job keeps running
 *   once every real hour and "every 15 minutes" keeps meaning 15 real
 *   minutes across both changes.  No real time is skipped and no instant
 *   fires twice.
 *
 * The search steps by fields (next matching month, day, hour, minute) in
 * local wall-clock time, one stretch of constant UTC offset at a time, so
 * even "0 0 29 2 *" is found after a few dozen steps.  The horizon is
 * five years: past it, (time_t)-1.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobrund.h"

/* How far ahead cron_next_fire looks: five years and a day or two. */
#define CRON_HORIZON    ((int64_t)(5 * 366 + 1) * 86400)
/* Times beyond this (about 34,000 years) are refused, so nothing overflows. */
#define CRON_TIME_MAX   ((int64_t)1 << 40)
/* A zone file bigger than this is not a zone file. */
#define TZ_FILE_MAX     (1024 * 1024)

struct cron_spec {
	char *text;                     /* as written, for messages */
	uint64_t minute;                /* bit N: minute N, 0-59 */
	uint32_t hour;                  /* 0-23 */
	uint32_t dom;                   /* 1-31 */
	uint16_t month;                 /* 1-12 */
	uint8_t dow;                    /* 0-6, Sunday 0 (7 is folded in) */
	bool dom_star;                  /* the field starts with `*` */
	bool dow_star;
	bool hour_star;                 /* an interval schedule: see above */
};

/* ------------------------------------------------------------------ */
/* Parsing                                                             */
/* ------------------------------------------------------------------ */

static const char *const cron_months[] = {
	"jan", "feb", "mar", "apr", "may", "jun",
	"jul", "aug", "sep", "oct", "nov", "dec", NULL
};
static const char *const cron_days[] = {
	"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL
};

struct cron_field {
	const char *name;
	int min, max;
	const char *const *names;       /* names[i] means value base + i */
	int base;
	const char *what;               /* "month name", for messages */
};

static const struct cron_field cron_fields[5] = {
	{ "minute", 0, 59, NULL, 0, NULL },
	{ "hour", 0, 23, NULL, 0, NULL },
	{ "day of month", 1, 31, NULL, 0, NULL },
	{ "month", 1, 12, cron_months, 1, "month name" },
	{ "day of week", 0, 7, cron_days, 0, "weekday name" },
};

static const struct {
	const char *name;
	const char *expansion;
} cron_macros[] = {
	{ "@yearly", "0 0 1 1 *" },
	{ "@annually", "0 0 1 1 *" },
	{ "@monthly", "0 0 1 * *" },
	{ "@weekly", "0 0 * * 0" },
	{ "@daily", "0 0 * * *" },
	{ "@midnight", "0 0 * * *" },
	{ "@hourly", "0 * * * *" },
};

static void JR_PRINTFLIKE(3, 4)
cron_error(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
 * Read one value of field F (a number or, where the field has them, a
 * name) from *PP and advance it.  ITEM is the whole list item, for
 * messages.
 */
static int
cron_value(int fno, const char **pp, const char *item, int *out, char *err,
    size_t errlen)
{
	const struct cron_field *f = &cron_fields[fno];
	const char *p = *pp, *start = p;
	long v = 0;
	int i;

	if (isdigit((unsigned char)*p)) {
		while (isdigit((unsigned char)*p)) {
			if (v < 1000)   /* big enough to be out of range */
				v = v * 10 + (*p - '0');
			p++;
		}
		if (v < f->min || v > f->max) {
			cron_error(err, errlen, "field %d (%s): %.*s is out of "
			    "range %d-%d", fno + 1, f->name, (int)(p - start),
			    start, f->min, f->max);
			return -1;
		}
		*out = (int)v;
		*pp = p;
		return 0;
	}
	if (isalpha((unsigned char)*p)) {
		while (isalpha((unsigned char)*p))
			p++;
		if (f->names == NULL) {
			cron_error(err, errlen, "field %d (%s): '%.*s' is not a "
			    "number", fno + 1, f->name, (int)(p - start), start);
			return -1;
		}
		for (i = 0; f->names[i] != NULL; i++) {
			if (p - start == 3 &&
			    strncasecmp(start, f->names[i], 3) == 0) {
				*out = f->base + i;
				*pp = p;
				return 0;
			}
		}
		cron_error(err, errlen, "field %d (%s): unknown %s '%.*s'",
		    fno + 1, f->name, f->what, (int)(p - start), start);
		return -1;
	}
	if (*p == '\0')
		cron_error(err, errlen, "field %d (%s): a value is missing in "
		    "'%s'", fno + 1, f->name, item);
	else
		cron_error(err, errlen, "field %d (%s): unexpected '%c' in '%s'",
		    fno + 1, f->name, *p, item);
	return -1;
}

/* Parse one list item ("*", "5", "1-5", "*\/2", "3/10") into *BITS. */
static int
cron_item(int fno, const char *item, uint64_t *bits, bool *star, char *err,
    size_t errlen)
{
	const struct cron_field *f = &cron_fields[fno];
	const char *p = item;
	int lo, hi, v;
	long step = 1;
	bool single = false;

	if (*p == '\0') {
		cron_error(err, errlen, "field %d (%s): empty list item",
		    fno + 1, f->name);
		return -1;
	}
	if (*p == '*') {
		lo = f->min;
		hi = f->max;
		p++;
		*star = true;
	} else {
		if (cron_value(fno, &p, item, &lo, err, errlen) != 0)
			return -1;
		hi = lo;
		single = true;
		if (*p == '-') {
			p++;
			if (cron_value(fno, &p, item, &hi, err, errlen) != 0)
				return -1;
			if (hi < lo) {
				cron_error(err, errlen, "field %d (%s): range "
				    "'%s' is reversed", fno + 1, f->name, item);
				return -1;
			}
			single = false;
		}
	}
	if (*p == '/') {
		const char *s = ++p;

		step = 0;
		while (isdigit((unsigned char)*p)) {
			if (step < 1000)
				step = step * 10 + (*p - '0');
			p++;
		}
		if (p == s) {
			cron_error(err, errlen, "field %d (%s): a step is missing "
			    "in '%s'", fno + 1, f->name, item);
			return -1;
		}
		if (step == 0) {
			cron_error(err, errlen, "field %d (%s): step 0 in '%s' "
			    "(the step must be at least 1)", fno + 1, f->name,
			    item);
			return -1;
		}
		if (single)     /* "A/S" means "A-max/S" */
			hi = f->max;
	}
	if (*p != '\0') {
		cron_error(err, errlen, "field %d (%s): unexpected '%c' in '%s'",
		    fno + 1, f->name, *p, item);
		return -1;
	}
	for (v = lo; v <= hi; v += (int)step)
		*bits |= (uint64_t)1 << v;
	return 0;
}

/* Parse FIELD (a comma-separated list; modified in place). */
static int
cron_field(int fno, char *field, uint64_t *bits, bool *star, char *err,
    size_t errlen)
{
	char *item = field, *comma;

	/* Only the field's first character decides the DOM/DOW rule. */
	*star = false;
	for (;;) {
		bool item_star = false;

		comma = strchr(item, ',');
		if (comma != NULL)
			*comma = '\0';
		if (cron_item(fno, item, bits, &item_star, err, errlen) != 0)
			return -1;
		if (item == field && item_star)
			*star = true;
		if (comma == NULL)
			return 0;
		item = comma + 1;
	}
}

struct cron_spec *
cron_parse(const char *spec, char *err, size_t errlen)
{
	struct cron_spec *cs = NULL;
	const char *text = spec;
	char *copy = NULL, *fields[5], *p;
	uint64_t bits[5] = { 0 };
	bool stars[5];
	size_t i;
	int n;

	if (spec == NULL) {
		cron_error(err, errlen, "no schedule");
		errno = EINVAL;
		return NULL;
	}
	while (isspace((unsigned char)*text))
		text++;
	if (*text == '@') {
		size_t len = strcspn(text, " \t\r\n");

		for (i = 0; i < sizeof cron_macros / sizeof cron_macros[0]; i++) {
			if (strlen(cron_macros[i].name) == len &&
			    strncasecmp(text, cron_macros[i].name, len) == 0)
				break;
		}
		if (i == sizeof cron_macros / sizeof cron_macros[0]) {
			cron_error(err, errlen, "unknown macro '%.*s'",
			    (int)len, text);
			errno = EINVAL;
			return NULL;
		}
		if (text[len + strspn(text + len, " \t\r\n")] != '\0') {
			cron_error(err, errlen, "unexpected text after '%.*s'",
			    (int)len, text);
			errno = EINVAL;
			return NULL;
		}
		text = cron_macros[i].expansion;
	}

	if ((copy = strdup(text)) == NULL) {
		cron_error(err, errlen, "out of memory");
		goto fail;
	}
	n = 0;
	p = copy;
	for (;;) {
		p += strspn(p, " \t\r\n");
		if (*p == '\0')
			break;
		if (n < 5)
			fields[n] = p;
		n++;
		p += strcspn(p, " \t\r\n");
		if (*p != '\0')
			*p++ = '\0';
	}
	if (n != 5) {
		cron_error(err, errlen, "expected 5 fields, got %d", n);
		errno = EINVAL;
		goto fail;
	}
	for (i = 0; i < 5; i++) {
		if (cron_field((int)i, fields[i], &bits[i], &stars[i], err,
		    errlen) != 0) {
			errno = EINVAL;
			goto fail;
		}
	}
	free(copy);
	copy = NULL;

	if ((cs = calloc(1, sizeof *cs)) == NULL ||
	    (cs->text = strdup(spec)) == NULL) {
		cron_error(err, errlen, "out of memory");
		goto fail;
	}
	cs->minute = bits[0];
	cs->hour = (uint32_t)bits[1];
	cs->dom = (uint32_t)bits[2];
	cs->month = (uint16_t)bits[3];
	if (bits[4] & ((uint64_t)1 << 7))
		bits[4] |= 1;
	cs->dow = (uint8_t)(bits[4] & 0x7f);
	cs->hour_star = stars[1];
	cs->dom_star = stars[2];
	cs->dow_star = stars[4];
	return cs;

fail:
	free(copy);
	cron_free(cs);
	return NULL;
}

void
cron_free(struct cron_spec *cs)
{
	if (cs == NULL)
		return;
	free(cs->text);
	free(cs);
}

/* ------------------------------------------------------------------ */
/* Calendar arithmetic (proleptic Gregorian, no time zone)             */
/* ------------------------------------------------------------------ */

/* Floor division, for times before 1970. */
static int64_t
floor_div(int64_t a, int64_t b)
{
	return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Days since 1970-01-01 (H. Hinnant's algorithm). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = floor_div(y, 400);
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = floor_div(z, 146097);
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

static bool
is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
days_in_month(int64_t y, int m)
{
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31,
	    30, 31 };

	return m == 2 && is_leap(y) ? 29 : mdays[m - 1];
}

/* 0 = Sunday.  1970-01-01 was a Thursday. */
static int
weekday(int64_t days)
{
	return (int)(((days % 7) + 11) % 7);
}

/* ------------------------------------------------------------------ */
/* Matching in wall-clock time                                         */
/* ------------------------------------------------------------------ */

static bool
cron_day_matches(const struct cron_spec *cs, int64_t y, int m, int d)
{
	bool dom = (cs->dom >> d) & 1;
	bool dow = (cs->dow >> weekday(days_from_civil(y, m, d))) & 1;

	/* Vixie: OR when both are restricted, else AND (`*` matches all). */
	if (!cs->dom_star && !cs->dow_star)
		return dom || dow;
	return dom && dow;
}

/* The next set bit of BITS above POS, or -1. */
static int
next_bit(uint64_t bits, int pos, int max)
{
	int i;

	for (i = pos + 1; i <= max; i++) {
		if ((bits >> i) & 1)
			return i;
	}
	return -1;
}

/*
 * The first wall-clock minute at or after FROM (local seconds: seconds
 * since 1970 as if local time were UTC) that CS matches and is not after
 * LIMIT.  False when there is none.
 */
static bool
cron_search(const struct cron_spec *cs, int64_t from, int64_t limit,
    int64_t *out)
{
	int64_t days, secs, y, limit_y, l;
	int m, d, h, mi, lm, ld;

	from = floor_div(from + 59, 60) * 60;
	days = floor_div(from, 86400);
	secs = from - days * 86400;
	civil_from_days(days, &y, &m, &d);
	h = (int)(secs / 3600);
	mi = (int)(secs % 3600 / 60);
	civil_from_days(floor_div(limit, 86400), &limit_y, &lm, &ld);

	while (y <= limit_y) {
		if (!((cs->month >> m) & 1)) {
			if (++m > 12) {
				m = 1;
				y++;
			}
			d = 1;
			h = mi = 0;
			continue;
		}
		if (!cron_day_matches(cs, y, m, d)) {
next_day:
			if (++d > days_in_month(y, m)) {
				d = 1;
				if (++m > 12) {
					m = 1;
					y++;
				}
			}
			h = mi = 0;
			continue;
		}
		if (!((cs->hour >> h) & 1)) {
			if ((h = next_bit(cs->hour, h, 23)) == -1)
				goto next_day;
			mi = 0;
			continue;
		}
		if (!((cs->minute >> mi) & 1)) {
			if ((mi = next_bit(cs->minute, mi, 59)) == -1) {
				mi = 0;
				if (++h > 23)
					goto next_day;
			}
			continue;
		}
		l = days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60;
		if (l > limit)
			return false;
		*out = l;
		return true;
	}
	return false;
}

/* ------------------------------------------------------------------ */
/* Time zones                                                          */
/* ------------------------------------------------------------------ */

/*
 * A zone as the list of instants at which its UTC offset changes (only
 * real changes: a transition that only renames the zone is dropped),
 * covering whatever cron_next_fire will look at.
 */
struct tz {
	int64_t *at;                    /* ascending */
	int32_t *off;                   /* the offset from at[i] on */
	size_t n, cap;
	int32_t off0;                   /* the offset before at[0] */
};

/* A POSIX TZ rule date: Jn, n or Mm.w.d, and the local time of day. */
struct tz_rdate {
	char kind;                      /* 'J', 'D' (plain n) or 'M' */
	int a, b, c;
	int32_t time;
};

struct tz_posix {
	int32_t std_off, dst_off;       /* seconds east of UTC */
	bool has_dst;
	struct tz_rdate start, end;
};

static void
tz_free(struct tz *z)
{
	free(z->at);
	free(z->off);
}

/* Append a transition; a second one at the same instant replaces it. */
static int
tz_push(struct tz *z, int64_t at, int32_t off)
{
	int32_t prev;

	if (z->n > 0 && at < z->at[z->n - 1])
		return 0;       /* out of order: the file is odd, skip it */
	if (z->n > 0 && at == z->at[z->n - 1])
		z->n--;
	prev = z->n > 0 ? z->off[z->n - 1] : z->off0;
	if (off == prev)
		return 0;
	if (z->n == z->cap) {
		size_t cap = z->cap ? z->cap * 2 : 64;
		int64_t *nat;
		int32_t *noff;

		if ((nat = realloc(z->at, cap * sizeof *nat)) == NULL)
			return -1;
		z->at = nat;
		if ((noff = realloc(z->off, cap * sizeof *noff)) == NULL)
			return -1;
		z->off = noff;
		z->cap = cap;
	}
	z->at[z->n] = at;
	z->off[z->n] = off;
	z->n++;
	return 0;
}

/* Index of the last transition at or before T, or -1. */
static ptrdiff_t
tz_find(const struct tz *z, int64_t t)
{
	size_t lo = 0, hi = z->n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (z->at[mid] <= t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (ptrdiff_t)lo - 1;
}

/* An abbreviation: three or more letters, or <anything quoted>. */
static const char *
posix_name(const char *p)
{
	const char *s = p;

	if (*p == '<') {
		if ((p = strchr(p, '>')) == NULL || p == s + 1)
			return NULL;
		return p + 1;
	}
	while (isalpha((unsigned char)*p))
		p++;
	return p - s >= 3 ? p : NULL;
}

static const char *
posix_num(const char *p, int min, int max, int *out)
{
	int v = 0;

	if (!isdigit((unsigned char)*p))
		return NULL;
	while (isdigit((unsigned char)*p)) {
		v = v * 10 + (*p++ - '0');
		if (v > max)
			return NULL;
	}
	if (v < min)
		return NULL;
	*out = v;
	return p;
}

/* [+-]hh[:mm[:ss]], in seconds. */
static const char *
posix_time(const char *p, int maxh, int32_t *out)
{
	int sign = 1, h, mi = 0, s = 0;

	if (*p == '+' || *p == '-')
		sign = *p++ == '-' ? -1 : 1;
	if ((p = posix_num(p, 0, maxh, &h)) == NULL)
		return NULL;
	if (*p == ':' && (p = posix_num(p + 1, 0, 59, &mi)) != NULL &&
	    *p == ':')
		p = posix_num(p + 1, 0, 59, &s);
	if (p == NULL)
		return NULL;
	*out = sign * (h * 3600 + mi * 60 + s);
	return p;
}

static const char *
posix_rdate(const char *p, struct tz_rdate *r)
{
	r->time = 2 * 3600;
	if (*p == 'J') {
		r->kind = 'J';
		p = posix_num(p + 1, 1, 365, &r->a);
	} else if (*p == 'M') {
		r->kind = 'M';
		if ((p = posix_num(p + 1, 1, 12, &r->a)) == NULL || *p != '.' ||
		    (p = posix_num(p + 1, 1, 5, &r->b)) == NULL || *p != '.')
			return NULL;
		p = posix_num(p + 1, 0, 6, &r->c);
	} else {
		r->kind = 'D';
		p = posix_num(p, 0, 365, &r->a);
	}
	if (p != NULL && *p == '/')
		p = posix_time(p + 1, 167, &r->time);   /* RFC 8536 range */
	return p;
}

/* Parse a POSIX TZ string ("CET-1CEST,M3.5.0,M10.5.0/3"). */
static int
posix_parse(const char *s, struct tz_posix *pz)
{
	const char *p = s;
	int32_t v;

	memset(pz, 0, sizeof *pz);
	if ((p = posix_name(p)) == NULL || (p = posix_time(p, 24, &v)) == NULL)
		return -1;
	pz->std_off = -v;       /* POSIX counts west of UTC */
	if (*p == '\0')
		return 0;
	if ((p = posix_name(p)) == NULL)
		return -1;
	pz->has_dst = true;
	pz->dst_off = pz->std_off + 3600;
	if (*p != ',' && *p != '\0') {
		if ((p = posix_time(p, 24, &v)) == NULL)
			return -1;
		pz->dst_off = -v;
	}
	if (*p == '\0')         /* glibc's default: the US rules */
		p = ",M3.2.0,M11.1.0";
	if (*p != ',' || (p = posix_rdate(p + 1, &pz->start)) == NULL ||
	    *p != ',' || (p = posix_rdate(p + 1, &pz->end)) == NULL ||
	    *p != '\0')
		return -1;
	return 0;
}

/* The day (since 1970) on which rule date R falls in year Y. */
static int64_t
posix_day(const struct tz_rdate *r, int64_t y)
{
	int64_t first;
	int day;

	switch (r->kind) {
	case 'J':       /* 1-365, February 29th never counted */
		return days_from_civil(y, 1, 1) + r->a - 1 +
		    (is_leap(y) && r->a >= 60);
	case 'D':       /* 0-365, February 29th counted */
		return days_from_civil(y, 1, 1) + r->a;
	default:        /* day c of week b (5: the last) of month a */
		first = days_from_civil(y, r->a, 1);
		day = (r->c - weekday(first) + 7) % 7 + (r->b - 1) * 7;
		while (day >= days_in_month(y, r->a))
			day -= 7;
		return first + day;
	}
}

/* Add PZ's transitions for years Y0..Y1 that come after AFTER. */
static int
posix_expand(struct tz *z, const struct tz_posix *pz, int64_t y0, int64_t y1,
    int64_t after)
{
	int64_t y, start, end;

	for (y = y0; y <= y1; y++) {
		/* The start is written in standard time, the end in DST. */
		start = posix_day(&pz->start, y) * 86400 + pz->start.time -
		    pz->std_off;
		end = posix_day(&pz->end, y) * 86400 + pz->end.time -
		    pz->dst_off;
		/* On a tie (DST all year) the change to DST wins. */
		if (end <= start) {
			if (end > after && tz_push(z, end, pz->std_off) != 0)
				return -1;
			if (start > after && tz_push(z, start, pz->dst_off) != 0)
				return -1;
		} else {
			if (start > after && tz_push(z, start, pz->dst_off) != 0)
				return -1;
			if (end > after && tz_push(z, end, pz->std_off) != 0)
				return -1;
		}
	}
	return 0;
}

/* A zone from a POSIX TZ string alone. */
static int
tz_from_posix(struct tz *z, const struct tz_posix *pz, int64_t y0, int64_t y1)
{
	int64_t s, e;

	z->off0 = pz->std_off;
	if (!pz->has_dst)
		return 0;
	/* Before the first change of Y0: DST if that change ends it. */
	s = posix_day(&pz->start, y0) * 86400 + pz->start.time - pz->std_off;
	e = posix_day(&pz->end, y0) * 86400 + pz->end.time - pz->dst_off;
	if (e <= s)
		z->off0 = pz->dst_off;
	return posix_expand(z, pz, y0, y1, INT64_MIN);
}

static uint32_t
be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static int64_t
be64(const unsigned char *p)
{
	return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/*
 * Parse a TZif file (RFC 8536): the 64-bit block when there is one, and
 * its footer's POSIX rule for the years after the last transition.
 */
static int
tzif_parse(struct tz *z, const unsigned char *buf, size_t len, int64_t y0,
    int64_t y1)
{
	const unsigned char *p = buf, *end = buf + len, *times, *idx, *types;
	size_t isut, isstd, leap, timecnt, typecnt, charcnt, datalen, i, tsz;
	int64_t at, last = INT64_MIN, ylast;
	struct tz_posix pz;
	int m, d;
	char footer[256];
	const unsigned char *nl;

	for (tsz = 4;; tsz = 8) {
		if ((size_t)(end - p) < 44 || memcmp(p, "TZif", 4) != 0)
			return -1;
		isut = be32(p + 20);
		isstd = be32(p + 24);
		leap = be32(p + 28);
		timecnt = be32(p + 32);
		typecnt = be32(p + 36);
		charcnt = be32(p + 40);
		if (timecnt > 100000 || typecnt == 0 || typecnt > 256 ||
		    charcnt > 100000 || leap > 100000 || isut > 256 ||
		    isstd > 256)
			return -1;
		datalen = timecnt * tsz + timecnt + typecnt * 6 + charcnt +
		    leap * (tsz + 4) + isstd + isut;
		if ((size_t)(end - p) - 44 < datalen)
			return -1;
		if (tsz == 8 || buf[4] < '2')
			break;
		p += 44 + datalen;      /* skip the 32-bit block */
	}
	times = p + 44;
	idx = times + timecnt * tsz;
	types = idx + timecnt;

	z->off0 = (int32_t)be32(types);
	for (i = 0; i < timecnt; i++) {
		if (idx[i] >= typecnt)
			return -1;
		at = tsz == 8 ? be64(times + i * 8) :
		    (int32_t)be32(times + i * 4);
		if (tz_push(z, at, (int32_t)be32(types + idx[i] * 6)) != 0)
			return -1;
		last = at;
	}

	/* The footer: "\nPOSIX-TZ\n", version 2 and later. */
	p = times + datalen;
	if (tsz != 8 || p >= end || *p != '\n')
		return 0;
	p++;
	if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL ||
	    nl == p || (size_t)(nl - p) >= sizeof footer)
		return 0;
	memcpy(footer, p, (size_t)(nl - p));
	footer[nl - p] = '\0';
	if (posix_parse(footer, &pz) != 0)
		return 0;       /* use what the table says */
	if (timecnt == 0) {
		tz_free(z);
		memset(z, 0, sizeof *z);
		return tz_from_posix(z, &pz, y0, y1);
	}
	if (!pz.has_dst)
		return tz_push(z, last + 1, pz.std_off);
	/* Years between the table's end and Y0 matter not: we start at Y0. */
	civil_from_days(floor_div(last, 86400), &ylast, &m, &d);
	return posix_expand(z, &pz, ylast > y0 ? ylast : y0, y1, last);
}

static int
tz_read_file(struct tz *z, const char *path, int64_t y0, int64_t y1)
{
	unsigned char *buf = NULL;
	struct stat st;
	size_t len = 0;
	ssize_t r;
	int fd, rc = -1;

	/* O_NONBLOCK: a FIFO (or a device) named as a zone must not hang
	 * the caller in open(); it is then refused as not a regular file. */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) == -1)
		return -1;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
	    st.st_size > TZ_FILE_MAX || st.st_size < 44)
		goto out;
	if ((buf = malloc((size_t)st.st_size)) == NULL)
		goto out;
	while (len < (size_t)st.st_size) {
		r = read(fd, buf + len, (size_t)st.st_size - len);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			goto out;
		len += (size_t)r;
	}
	rc = tzif_parse(z, buf, len, y0, y1);
out:
	free(buf);
	close(fd);
	return rc;
}

/*
 * Load zone NAME (NULL: the local zone) with transitions at least from
 * the year before NOW to a year past the horizon.  -1 with errno EINVAL
 * when NAME is neither a zone file nor a POSIX TZ string.
 */
static int
tz_load(struct tz *z, const char *name, int64_t now)
{
	char path[PATH_MAX];
	const char *dir;
	struct tz_posix pz;
	int64_t y0, y1;
	int m, d, n;
	bool local = name == NULL;

	memset(z, 0, sizeof *z);
	civil_from_days(floor_div(now, 86400), &y0, &m, &d);
	y0--;
	y1 = y0 + CRON_HORIZON / (365 * 86400) + 3;

	if (local) {
		/* Read, never set: see the top of the file. */
		if ((name = getenv("TZ")) == NULL) {
			if (tz_read_file(z, "/etc/localtime", y0, y1) == 0)
				return 0;
			goto utc;
		}
	}
	if (*name == ':')
		name++;
	if (*name == '\0')
		goto utc;
	if (*name == '/')
		n = snprintf(path, sizeof path, "%s", name);
	else {
		if ((dir = getenv("TZDIR")) == NULL || *dir == '\0')
			dir = "/usr/share/zoneinfo";
		n = snprintf(path, sizeof path, "%s/%s", dir, name);
	}
	if (n > 0 && (size_t)n < sizeof path &&
	    tz_read_file(z, path, y0, y1) == 0)
		return 0;
	tz_free(z);
	memset(z, 0, sizeof *z);
	if (posix_parse(name, &pz) == 0) {
		if (tz_from_posix(z, &pz, y0, y1) == 0)
			return 0;
		tz_free(z);
		memset(z, 0, sizeof *z);
		errno = ENOMEM;
		return -1;
	}
	/* Without tzdata, still know UTC by name. */
	if (local || strcmp(name, "UTC") == 0 || strcmp(name, "GMT") == 0 ||
	    strcmp(name, "Etc/UTC") == 0)
		goto utc;
	errno = EINVAL;
	return -1;
utc:
	tz_free(z);
	memset(z, 0, sizeof *z);
	return 0;
}

/* ------------------------------------------------------------------ */
/* The next firing                                                     */
/* ------------------------------------------------------------------ */

/*
 * Walk the zone one stretch of constant offset at a time, from NOW on.
 * Within a stretch, local time and real time run in step, so the first
 * matching wall-clock minute gives the answer if it lies in the stretch.
 * At a stretch's start, fixed-hour schedules also look at the local times
 * the change skipped (fire at the change) or repeated (skip them: they
 * fired in the previous stretch).
 */
time_t
cron_next_fire(const struct cron_spec *cs, const char *zone, time_t now)
{
	struct tz z;
	int64_t t, limit, s, e, from, l, result = -1;
	int32_t o, o_prev;
	ptrdiff_t i;

	if (cs == NULL) {
		errno = EINVAL;
		return (time_t)-1;
	}
	if ((int64_t)now > CRON_TIME_MAX || (int64_t)now < -CRON_TIME_MAX) {
		errno = ERANGE;
		return (time_t)-1;
	}
	if (tz_load(&z, zone, now) != 0)
		return (time_t)-1;

	limit = (int64_t)now + CRON_HORIZON;
	t = (int64_t)now + 1;
	while (t <= limit) {
		i = tz_find(&z, t);
		s = i >= 0 ? z.at[i] : INT64_MIN;
		e = (size_t)(i + 1) < z.n ? z.at[i + 1] : INT64_MAX;
		o = i >= 0 ? z.off[i] : z.off0;
		o_prev = i > 0 ? z.off[i - 1] : z.off0;
		from = t + o;

		if (!cs->hour_star && i >= 0) {
			/* Clocks went forward at S: skipped times fire at S. */
			if (s == t && o > o_prev &&
			    cron_search(cs, s + o_prev, s + o - 1, &l)) {
				result = s;
				break;
			}
			/* Clocks went back at S: repeated times already fired. */
			if (from < s + o_prev)
				from = s + o_prev;
		}
		if (!cron_search(cs, from, limit + o, &l))
			break;          /* nothing later in any stretch either */
		if (l - o < e) {
			result = l - o;
			break;
		}
		t = e;
	}
	tz_free(&z);
	if (result == -1 || result > limit) {
		errno = ERANGE;
		return (time_t)-1;
	}
	return (time_t)result;
}
