/*
 * test_cron.c - unit tests for daemon/cron.c: parse errors and their
 * messages, next-fire times in UTC, and the DST rules (a fixed-hour job
 * runs exactly once on a day the clocks change; an interval job follows
 * real time) in New York, Berlin and Sydney, from the zone files and from
 * POSIX TZ strings.
 *
 * Every expected time is a UTC epoch constant worked out independently
 * of cron.c (Python's zoneinfo; the comments give the wall time), so a
 * bug in cron.c cannot agree with itself.  The year-long tests use
 * glibc's localtime_r as a second, independent oracle.  A test that needs
 * a zone file skips when tzdata lacks it.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobrund.h"

#define NELEM(a) (sizeof (a) / sizeof (a)[0])

static bool
zone_available(const char *zone)
{
	char path[PATH_MAX];
	const char *dir = getenv("TZDIR");

	if (dir == NULL || *dir == '\0')
		dir = "/usr/share/zoneinfo";
	snprintf(path, sizeof path, "%s/%s", dir, zone);
	return access(path, R_OK) == 0;
}

/* Set TZ for the glibc oracle and NULL-zone tests; restored by tz_restore. */
static char *saved_tz;
static bool had_tz, tz_saved;

static void
tz_set(const char *value)
{
	const char *old = getenv("TZ");

	if (!tz_saved) {
		tz_saved = true;
		had_tz = old != NULL;
		saved_tz = old != NULL ? strdup(old) : NULL;
	}
	setenv("TZ", value, 1);
	tzset();
}

static int
tz_restore(void **state)
{
	(void)state;
	if (!tz_saved)
		return 0;
	if (had_tz)
		setenv("TZ", saved_tz, 1);
	else
		unsetenv("TZ");
	tzset();
	free(saved_tz);
	saved_tz = NULL;
	had_tz = tz_saved = false;
	return 0;
}

static struct cron_spec *
parse_ok(const char *text)
{
	char err[256] = "";
	struct cron_spec *cs = cron_parse(text, err, sizeof err);

	if (cs == NULL)
		fail_msg("cron_parse(\"%s\") failed: %s", text, err);
	return cs;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */
/* ------------------------------------------------------------------ */

static void
test_parse_ok(void **state)
{
	static const char *const specs[] = {
		"* * * * *", "0 0 1 1 *", "59 23 31 12 7", "*/5 * * * *",
		"0-59/15 0-23/2 1-31/3 1-12/4 0-7/2", "5/15 * * * *",
		"1,2,3-5,10-20/5 * * * *", "0 9 * JAN-mar Mon-FRI",
		"0 0 * jan,jul sun,sat", " \t0  0\t* * *  ", "@yearly",
		"@annually", "@monthly", "@weekly", "@daily", "@midnight",
		"@hourly", "@DAILY", "  @hourly  ", "0 0 31 2 *",
	};
	size_t i;

	(void)state;
	for (i = 0; i < NELEM(specs); i++)
		cron_free(parse_ok(specs[i]));
	cron_free(NULL);
}

static void
test_parse_errors(void **state)
{
	static const struct {
		const char *spec;
		const char *msg;
	} cases[] = {
		{ "", "expected 5 fields, got 0" },
		{ "   ", "expected 5 fields, got 0" },
		{ "* * * *", "expected 5 fields, got 4" },
		{ "* * * * * *", "expected 5 fields, got 6" },
		{ "60 * * * *", "field 1 (minute): 60 is out of range 0-59" },
		{ "0 24 * * *", "field 2 (hour): 24 is out of range 0-23" },
		{ "0 0 0 * *", "field 3 (day of month): 0 is out of range 1-31" },
		{ "0 0 32 * *", "field 3 (day of month): 32 is out of range 1-31" },
		{ "0 0 * 13 *", "field 4 (month): 13 is out of range 1-12" },
		{ "0 0 * 0 *", "field 4 (month): 0 is out of range 1-12" },
		{ "0 0 * * 8", "field 5 (day of week): 8 is out of range 0-7" },
		{ "99999999999 * * * *",
		  "field 1 (minute): 99999999999 is out of range 0-59" },
		{ "0 1-24 * * *", "field 2 (hour): 24 is out of range 0-23" },
		{ "0 0 * foo *", "field 4 (month): unknown month name 'foo'" },
		{ "0 0 * january *",
		  "field 4 (month): unknown month name 'january'" },
		{ "0 0 * * funday",
		  "field 5 (day of week): unknown weekday name 'funday'" },
		{ "0 0 * * jan",
		  "field 5 (day of week): unknown weekday name 'jan'" },
		{ "abc * * * *", "field 1 (minute): 'abc' is not a number" },
		{ "0 0 mon * *",
		  "field 3 (day of month): 'mon' is not a number" },
		{ "*/0 * * * *",
		  "field 1 (minute): step 0 in '*/0' (the step must be at "
		  "least 1)" },
		{ "0 1-5/0 * * *",
		  "field 2 (hour): step 0 in '1-5/0' (the step must be at "
		  "least 1)" },
		{ "*/ * * * *", "field 1 (minute): a step is missing in '*/'" },
		{ "5-1 * * * *", "field 1 (minute): range '5-1' is reversed" },
		{ "0 0 * dec-jan *",
		  "field 4 (month): range 'dec-jan' is reversed" },
		{ "0 0 * * sat-sun",
		  "field 5 (day of week): range 'sat-sun' is reversed" },
		{ "1,,2 * * * *", "field 1 (minute): empty list item" },
		{ "1, * * * *", "field 1 (minute): empty list item" },
		{ "0 ,1 * * *", "field 2 (hour): empty list item" },
		{ "1- * * * *", "field 1 (minute): a value is missing in '1-'" },
		{ "1x * * * *", "field 1 (minute): unexpected 'x' in '1x'" },
		{ "-1 * * * *", "field 1 (minute): unexpected '-' in '-1'" },
		{ "** * * * *", "field 1 (minute): unexpected '*' in '**'" },
		{ "1-2-3 * * * *", "field 1 (minute): unexpected '-' in '1-2-3'" },
		{ "@reboot", "unknown macro '@reboot'" },
		{ "@every 10s", "unknown macro '@every'" },
		{ "@", "unknown macro '@'" },
		{ "@daily 5", "unexpected text after '@daily'" },
	};
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < NELEM(cases); i++) {
		struct cron_spec *cs;

		strcpy(err, "(not set)");
		errno = 0;
		cs = cron_parse(cases[i].spec, err, sizeof err);
		if (cs != NULL) {
			cron_free(cs);
			fail_msg("\"%s\" parsed, expected \"%s\"", cases[i].spec,
			    cases[i].msg);
		}
		assert_int_equal(errno, EINVAL);
		if (strcmp(err, cases[i].msg) != 0)
			fail_msg("\"%s\": got \"%s\", expected \"%s\"",
			    cases[i].spec, err, cases[i].msg);
	}
}

/* A short or missing error buffer is not overrun. */
static void
test_parse_error_buffer(void **state)
{
	char err[12];

	(void)state;
	memset(err, 'X', sizeof err);
	assert_null(cron_parse("0 24 * * *", err, 8));
	assert_string_equal(err, "field 2");
	assert_int_equal(err[8], 'X');
	assert_null(cron_parse("0 24 * * *", NULL, 0));
	assert_null(cron_parse("0 24 * * *", err, 0));
	assert_null(cron_parse(NULL, err, sizeof err));
}

/* ------------------------------------------------------------------ */
/* Next fire, UTC                                                      */
/* ------------------------------------------------------------------ */

static const struct {
	const char *spec;
	int64_t now, next;
} utc_cases[] = {
	{ "* * * * *", 1767225600, 1767225660 },       /* 2026-01-01 00:00:00 -> 2026-01-01 00:01 */
	{ "* * * * *", 1767225630, 1767225660 },       /* 2026-01-01 00:00:30 -> 2026-01-01 00:01 */
	{ "*/5 * * * *", 1767226020, 1767226200 },     /* 2026-01-01 00:07:00 -> 2026-01-01 00:10 */
	{ "*/5 * * * *", 1798761480, 1798761600 },     /* 2026-12-31 23:58:00 -> 2027-01-01 00:00 */
	{ "0 12 * * *", 1767268800, 1767355200 },      /* 2026-01-01 12:00:00 -> 2026-01-02 12:00 */
	{ "0 12 * * *", 1767268799, 1767268800 },      /* 2026-01-01 11:59:59 -> 2026-01-01 12:00 */
	{ "15,45 8 * * *", 1767255300, 1767257100 },   /* 2026-01-01 08:15:00 -> 2026-01-01 08:45 */
	{ "0 9-17 * * mon-fri", 1767375000, 1767603600 }, /* 2026-01-02 17:30:00 -> 2026-01-05 09:00 */
	{ "5/15 * * * *", 1767225900, 1767226800 },    /* 2026-01-01 00:05:00 -> 2026-01-01 00:20 */
	{ "5/15 * * * *", 1767228600, 1767229500 },    /* 2026-01-01 00:50:00 -> 2026-01-01 01:05 */
	{ "10-30/10 * * * *", 1767227400, 1767229800 }, /* 2026-01-01 00:30:00 -> 2026-01-01 01:10 */
	{ "0 0 1 jan,JUL *", 1769904000, 1782864000 }, /* 2026-02-01 00:00:00 -> 2026-07-01 00:00 */
	{ "0 0 * * 7", 1767225600, 1767484800 },       /* 2026-01-01 00:00:00 -> 2026-01-04 00:00 */
	{ "0 0 * * Sun", 1767225600, 1767484800 },     /* 2026-01-01 00:00:00 -> 2026-01-04 00:00 */
	{ "0 0 * * 5-7", 1767225600, 1767312000 },     /* 2026-01-01 00:00:00 -> 2026-01-02 00:00 */
	{ "0 0 31 * *", 1775001600, 1780185600 },      /* 2026-04-01 00:00:00 -> 2026-05-31 00:00 */
	{ "0 0 31 * *", 1780185600, 1785456000 },      /* 2026-05-31 00:00:00 -> 2026-07-31 00:00 */
	{ "0 0 29 2 *", 1735689600, 1835395200 },      /* 2025-01-01 00:00:00 -> 2028-02-29 00:00 */
	{ "0 0 29 2 *", 4076006400, 4233686400 },      /* 2099-03-01 00:00:00 -> 2104-02-29 00:00 */
	{ "0 0 13 * 5", 1767225600, 1767312000 },      /* 2026-01-01 00:00:00 -> 2026-01-02 00:00 (OR: a Friday) */
	{ "0 0 13 * 5", 1767960000, 1768262400 },      /* 2026-01-09 12:00:00 -> 2026-01-13 00:00 (OR: the 13th) */
	{ "0 0 13 * *", 1767225600, 1768262400 },      /* 2026-01-01 00:00:00 -> 2026-01-13 00:00 */
	{ "0 0 */10 * 1", 1767225600, 1778457600 },    /* 2026-01-01 00:00:00 -> 2026-05-11 00:00 (AND: "*\/10") */
	{ "@yearly", 1780272000, 1798761600 },         /* 2026-06-01 00:00:00 -> 2027-01-01 00:00 */
	{ "@monthly", 1780272000, 1782864000 },        /* 2026-06-01 00:00:00 -> 2026-07-01 00:00 */
	{ "@weekly", 1767225600, 1767484800 },         /* 2026-01-01 00:00:00 -> 2026-01-04 00:00 */
	{ "@daily", 1767261600, 1767312000 },          /* 2026-01-01 10:00:00 -> 2026-01-02 00:00 */
	{ "@hourly", 1767261600, 1767265200 },         /* 2026-01-01 10:00:00 -> 2026-01-01 11:00 */
	{ "59 23 31 12 *", 1767225600, 1798761540 },   /* 2026-01-01 00:00:00 -> 2026-12-31 23:59 */
	/* Nothing within five years: -1. */
	{ "0 0 31 2 *", 1767225600, -1 },
	{ "0 0 30 2 *", 1767225600, -1 },
	{ "0 0 29 2 *", 3981398400, -1 },              /* 2096-03-01: 2100 is no leap year */
};

static void
test_next_utc(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < NELEM(utc_cases); i++) {
		struct cron_spec *cs = parse_ok(utc_cases[i].spec);
		time_t got;

		errno = 0;
		got = cron_next_fire(cs, "UTC", (time_t)utc_cases[i].now);
		if ((int64_t)got != utc_cases[i].next)
			fail_msg("\"%s\" after %lld: got %lld, expected %lld",
			    utc_cases[i].spec, (long long)utc_cases[i].now,
			    (long long)got, (long long)utc_cases[i].next);
		if (got == (time_t)-1)
			assert_int_equal(errno, ERANGE);
		cron_free(cs);
	}
}

/* "Etc/UTC" from tzdata and the POSIX string "UTC0" agree with "UTC". */
static void
test_next_utc_spellings(void **state)
{
	static const char *const zones[] = { "UTC0", ":UTC", "Etc/UTC", "GMT" };
	size_t i, j;

	(void)state;
	for (i = 0; i < NELEM(zones); i++) {
		for (j = 0; j < NELEM(utc_cases); j++) {
			struct cron_spec *cs = parse_ok(utc_cases[j].spec);

			assert_int_equal((int64_t)cron_next_fire(cs, zones[i],
			    (time_t)utc_cases[j].now), utc_cases[j].next);
			cron_free(cs);
		}
	}
}

static void
test_bad_zone(void **state)
{
	struct cron_spec *cs = parse_ok("* * * * *");

	(void)state;
	errno = 0;
	assert_int_equal(cron_next_fire(cs, "No/Such_Zone", 1767225600), -1);
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_int_equal(cron_next_fire(NULL, "UTC", 1767225600), -1);
	assert_int_equal(errno, EINVAL);
	cron_free(cs);
}

/* ------------------------------------------------------------------ */
/* DST                                                                 */
/* ------------------------------------------------------------------ */

/*
 * Every firing of SPEC in [START, END) (one local day), in order.  Also
 * checks that each firing is strictly after the one before.
 */
static size_t
fires_in(const char *spec, const char *zone, int64_t start, int64_t end,
    int64_t *out, size_t max)
{
	struct cron_spec *cs = parse_ok(spec);
	int64_t t = start - 1;
	size_t n = 0;

	for (;;) {
		int64_t next = (int64_t)cron_next_fire(cs, zone, (time_t)t);

		if (next == -1)
			fail_msg("%s in %s: no firing after %lld", spec, zone,
			    (long long)t);
		assert_true(next > t);
		if (next >= end)
			break;
		if (n == max)
			fail_msg("%s in %s: more than %zu firings", spec, zone,
			    max);
		out[n++] = next;
		t = next;
	}
	cron_free(cs);
	return n;
}

/* Fixed-hour jobs on the days the clocks change: once, at the right time. */
static const struct dst_case {
	const char *zone;
	const char *posix;              /* the same rules as a POSIX TZ string */
	const char *spec;
	int64_t start, end;             /* local midnight to midnight */
	int64_t fires[4];               /* 0-terminated */
} dst_cases[] = {
	/* New York, 2026-03-08: 02:00 EST -> 03:00 EDT (07:00Z). */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 2 * * *",
	  1772946000, 1773028800, { 1772953200 } },                 /* 03:00 EDT */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "0 2 * * *",
	  1772946000, 1773028800, { 1772953200 } },                 /* 03:00 EDT */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "*/20 2 * * *",
	  1772946000, 1773028800, { 1772953200 } },                 /* 03:00 EDT, once */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "0 3 * * *",
	  1772946000, 1773028800, { 1772953200 } },                 /* 03:00 EDT */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 1 * * *",
	  1772946000, 1773028800, { 1772951400 } },                 /* 01:30 EST */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 1,2,3 * * *",
	  1772946000, 1773028800,
	  { 1772951400, 1772953200, 1772955000 } },                 /* 01:30 EST, 03:00, 03:30 EDT */
	/* New York, 2026-11-01: 02:00 EDT -> 01:00 EST (06:00Z). */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 1 * * *",
	  1793505600, 1793595600, { 1793511000 } },                 /* 01:30 EDT only */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "*/30 1 * * *",
	  1793505600, 1793595600, { 1793509200, 1793511000 } },     /* 01:00, 01:30 EDT only */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 2 * * *",
	  1793505600, 1793595600, { 1793518200 } },                 /* 02:30 EST */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 1,2 * * *",
	  1793505600, 1793595600, { 1793511000, 1793518200 } },     /* 01:30 EDT, 02:30 EST */
	/* 2040: past the zone file's table, from its POSIX footer. */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 2 * * *",
	  2215054800, 2215137600, { 2215062000 } },                 /* 2040-03-11 03:00 EDT */
	{ "America/New_York", "EST5EDT,M3.2.0,M11.1.0", "30 1 * * *",
	  2235614400, 2235704400, { 2235619800 } },                 /* 2040-11-04 01:30 EDT */
	/* Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST (01:00Z). */
	{ "Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3", "30 2 * * *",
	  1774738800, 1774821600, { 1774746000 } },                 /* 03:00 CEST */
	/* Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET (01:00Z). */
	{ "Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3", "30 2 * * *",
	  1792879200, 1792969200, { 1792888200 } },                 /* 02:30 CEST only */
	/* Sydney: the southern hemisphere, DST across New Year. */
	{ "Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3", "30 2 * * *",
	  1791036000, 1791118800, { 1791043200 } },                 /* 2026-10-04 03:00 AEDT */
	{ "Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3", "30 2 * * *",
	  1775307600, 1775397600, { 1775316600 } },                 /* 2026-04-05 02:30 AEDT only */
};

static void
check_dst_cases(const char *zone, bool posix)
{
	int64_t got[64];
	size_t i, j, n, want;

	for (i = 0; i < NELEM(dst_cases); i++) {
		const struct dst_case *c = &dst_cases[i];
		const char *z = posix ? c->posix : c->zone;

		if (strcmp(c->zone, zone) != 0)
			continue;
		n = fires_in(c->spec, z, c->start, c->end, got, NELEM(got));
		for (want = 0; want < NELEM(c->fires) && c->fires[want]; want++)
			;
		if (n != want)
			fail_msg("\"%s\" in %s on the day from %lld: %zu "
			    "firings, expected %zu", c->spec, z,
			    (long long)c->start, n, want);
		for (j = 0; j < n; j++) {
			if (got[j] != c->fires[j])
				fail_msg("\"%s\" in %s: firing %zu at %lld, "
				    "expected %lld", c->spec, z, j,
				    (long long)got[j], (long long)c->fires[j]);
		}
	}
}

static void
test_dst_fixed_new_york(void **state)
{
	(void)state;
	if (!zone_available("America/New_York"))
		skip();
	check_dst_cases("America/New_York", false);
}

static void
test_dst_fixed_berlin(void **state)
{
	(void)state;
	if (!zone_available("Europe/Berlin"))
		skip();
	check_dst_cases("Europe/Berlin", false);
}

static void
test_dst_fixed_sydney(void **state)
{
	(void)state;
	if (!zone_available("Australia/Sydney"))
		skip();
	check_dst_cases("Australia/Sydney", false);
}

/* The same days from POSIX TZ strings: needs no tzdata. */
static void
test_dst_fixed_posix(void **state)
{
	(void)state;
	check_dst_cases("America/New_York", true);
	check_dst_cases("Europe/Berlin", true);
	check_dst_cases("Australia/Sydney", true);
}

/*
 * The other POSIX TZ forms: Jn (February 29th not counted), plain n
 * (counted), quoted names, minutes in offsets, negative rule times (a
 * change at 23:00 the day before: the skipped 23:30 fires at midnight,
 * on the next local day).
 */
static void
test_posix_rules(void **state)
{
	static const struct {
		const char *zone;
		const char *spec;
		int64_t start, end;
		int64_t fire;           /* the one firing in [start, end) */
	} cases[] = {
		/* 2028-03-01 (J60 in a leap year): 03:00 XDT. */
		{ "XST5XDT,J60,J300", "30 2 * * *",
		  1835499600, 1835582400, 1835506800 },
		/* 2028-02-29 (day 59 counted from 0): 03:00 XDT. */
		{ "XST5XDT,59,299", "30 2 * * *",
		  1835413200, 1835496000, 1835420400 },
		/* 2026-01-01 12:00 at +03:30. */
		{ "<+0330>-3:30", "0 12 * * *",
		  1767225600, 1767312000, 1767256200 },
		/* Nuuk, 2026-03-28 23:00 -02 -> 2026-03-29 00:00 -01. */
		{ "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", "30 23 * * *",
		  1774663200, 1774789200, 1774746000 },
		{ "America/Nuuk", "30 23 * * *",
		  1774663200, 1774789200, 1774746000 },
	};
	int64_t got[8];
	size_t i, n;

	(void)state;
	for (i = 0; i < NELEM(cases); i++) {
		if (strchr(cases[i].zone, '/') != NULL &&
		    !zone_available(cases[i].zone))
			continue;
		n = fires_in(cases[i].spec, cases[i].zone, cases[i].start,
		    cases[i].end, got, NELEM(got));
		if (n != 1 || got[0] != cases[i].fire)
			fail_msg("\"%s\" in %s: %zu firings, the first at "
			    "%lld; expected one at %lld", cases[i].spec,
			    cases[i].zone, n, n ? (long long)got[0] : 0LL,
			    (long long)cases[i].fire);
	}
}

/*
 * Interval jobs follow real time: on a 23-hour day "0 * * * *" fires 23
 * times and on a 25-hour day 25 times, always an hour apart from local
 * midnight on; "*\/15" likewise every 900 s.
 */
static const struct {
	const char *zone;
	int64_t start, end;
	int hours;
} interval_days[] = {
	{ "America/New_York", 1772946000, 1773028800, 23 },     /* 2026-03-08 */
	{ "America/New_York", 1793505600, 1793595600, 25 },     /* 2026-11-01 */
	{ "America/New_York", 2215054800, 2215137600, 23 },     /* 2040-03-11 */
	{ "America/New_York", 2235614400, 2235704400, 25 },     /* 2040-11-04 */
	{ "Europe/Berlin", 1774738800, 1774821600, 23 },        /* 2026-03-29 */
	{ "Europe/Berlin", 1792879200, 1792969200, 25 },        /* 2026-10-25 */
};

static void
test_dst_interval(void **state)
{
	static const struct {
		const char *spec;
		int step;
	} specs[] = { { "0 * * * *", 3600 }, { "@hourly", 3600 },
	    { "*/15 * * * *", 900 } };
	int64_t got[128];
	size_t i, j, k, n, tested = 0;

	(void)state;
	for (i = 0; i < NELEM(interval_days); i++) {
		if (!zone_available(interval_days[i].zone))
			continue;
		for (j = 0; j < NELEM(specs); j++) {
			n = fires_in(specs[j].spec, interval_days[i].zone,
			    interval_days[i].start, interval_days[i].end, got,
			    NELEM(got));
			assert_int_equal(n, (size_t)interval_days[i].hours *
			    3600 / specs[j].step);
			for (k = 0; k < n; k++)
				assert_int_equal(got[k], interval_days[i].start +
				    (int64_t)k * specs[j].step);
			tested++;
		}
	}
	if (tested == 0)
		skip();
}

/*
 * A whole year, with glibc as the oracle: "30 2 * * *" fires once on each
 * of 365 local days, at 02:30, except on the day 02:30 does not exist,
 * when it fires at 03:00; "0 * * * *" fires every 3600 s.
 */
static void
check_year(const char *zone, int64_t start, int64_t end)
{
	struct cron_spec *daily = parse_ok("30 2 * * *");
	struct cron_spec *hourly = parse_ok("0 * * * *");
	int64_t t, next;
	struct tm tm;
	time_t tt;
	int n = 0, gap_days = 0, last_yday = -1;

	tz_set(zone);
	for (t = start - 1;; t = next) {
		next = (int64_t)cron_next_fire(daily, zone, (time_t)t);
		assert_true(next > t);
		if (next >= end)
			break;
		tt = (time_t)next;
		assert_non_null(localtime_r(&tt, &tm));
		assert_int_equal(tm.tm_yday, last_yday + 1);
		last_yday = tm.tm_yday;
		if (tm.tm_hour == 3 && tm.tm_min == 0 && tm.tm_sec == 0)
			gap_days++;
		else if (tm.tm_hour != 2 || tm.tm_min != 30 || tm.tm_sec != 0)
			fail_msg("%s: fired at %02d:%02d:%02d on day %d", zone,
			    tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_yday);
		n++;
	}
	assert_int_equal(n, 365);
	assert_int_equal(gap_days, 1);

	n = 0;
	for (t = start - 1;; t = next) {
		next = (int64_t)cron_next_fire(hourly, zone, (time_t)t);
		if (next >= end)
			break;
		assert_int_equal(next, start + (int64_t)n * 3600);
		n++;
	}
	assert_int_equal(n, 8760);
	cron_free(daily);
	cron_free(hourly);
}

static void
test_year_new_york(void **state)
{
	(void)state;
	if (!zone_available("America/New_York"))
		skip();
	/* 2026-01-01 00:00 EST to 2027-01-01 00:00 EST. */
	check_year("America/New_York", 1767243600, 1798779600);
}

static void
test_year_berlin(void **state)
{
	(void)state;
	if (!zone_available("Europe/Berlin"))
		skip();
	/* 2026-01-01 00:00 CET to 2027-01-01 00:00 CET. */
	check_year("Europe/Berlin", 1767222000, 1798758000);
}

/* NULL means the process's zone: $TZ as a name, ":name" or POSIX rules. */
static void
test_local_zone(void **state)
{
	static const struct {
		const char *tz;
		bool needs_file;
	} values[] = {
		{ "America/New_York", true },
		{ ":America/New_York", true },
		{ "EST5EDT,M3.2.0,M11.1.0", false },
		{ "EST5EDT", false },   /* a file, or POSIX with the US rules */
	};
	int64_t got[8];
	size_t i, j, n;

	(void)state;
	for (i = 0; i < NELEM(values); i++) {
		if (values[i].needs_file && !zone_available("America/New_York"))
			continue;
		tz_set(values[i].tz);
		for (j = 0; j < NELEM(dst_cases); j++) {
			if (strcmp(dst_cases[j].zone, "America/New_York") != 0 ||
			    dst_cases[j].start > 2000000000)
				continue;
			n = fires_in(dst_cases[j].spec, NULL, dst_cases[j].start,
			    dst_cases[j].end, got, NELEM(got));
			assert_true(n >= 1);
			assert_int_equal(got[0], dst_cases[j].fires[0]);
		}
	}
	/* An empty TZ is UTC, as in glibc. */
	tz_set("");
	for (j = 0; j < NELEM(utc_cases); j++) {
		struct cron_spec *cs = parse_ok(utc_cases[j].spec);

		assert_int_equal((int64_t)cron_next_fire(cs, NULL,
		    (time_t)utc_cases[j].now), utc_cases[j].next);
		cron_free(cs);
	}
}

/*
 * Tests that need a zone file are left out of the plan when tzdata lacks
 * it, with a TAP comment saying so.  (They also call skip() themselves,
 * but cmocka 1.1.5 prints a skip as "not ok N # SKIP", which automake's
 * tap-driver counts as a failure.)
 */
int
main(void)
{
	static const struct {
		struct CMUnitTest test;
		const char *zone;       /* needed from tzdata, or NULL */
	} all[] = {
		{ cmocka_unit_test(test_parse_ok), NULL },
		{ cmocka_unit_test(test_parse_errors), NULL },
		{ cmocka_unit_test(test_parse_error_buffer), NULL },
		{ cmocka_unit_test(test_next_utc), NULL },
		{ cmocka_unit_test(test_next_utc_spellings), NULL },
		{ cmocka_unit_test(test_bad_zone), NULL },
		{ cmocka_unit_test(test_dst_fixed_new_york), "America/New_York" },
		{ cmocka_unit_test(test_dst_fixed_berlin), "Europe/Berlin" },
		{ cmocka_unit_test(test_dst_fixed_sydney), "Australia/Sydney" },
		{ cmocka_unit_test(test_dst_fixed_posix), NULL },
		{ cmocka_unit_test(test_posix_rules), NULL },
		{ cmocka_unit_test(test_dst_interval), "America/New_York" },
		{ cmocka_unit_test_teardown(test_year_new_york, tz_restore),
		  "America/New_York" },
		{ cmocka_unit_test_teardown(test_year_berlin, tz_restore),
		  "Europe/Berlin" },
		{ cmocka_unit_test_teardown(test_local_zone, tz_restore), NULL },
	};
	struct CMUnitTest tests[NELEM(all)];
	size_t i, n = 0;

	for (i = 0; i < NELEM(all); i++) {
		if (all[i].zone != NULL && !zone_available(all[i].zone)) {
			printf("# SKIP %s: no %s in tzdata\n", all[i].test.name,
			    all[i].zone);
			continue;
		}
		tests[n++] = all[i].test;
	}
	return _cmocka_run_group_tests("test_cron", tests, n, NULL, NULL);
}
