/*
 * config.c - the config file (design.md, "The config file"): read it with
 * libconfig, check every key, type and range, and build a struct
 * jr_config; then load the plugins its jobs name and let each plugin
 * validate its job's settings.
 *
 * Every problem is reported, not just the first, as "FILE:LINE: message",
 * naming the job when there is one, so that `jobrund -t` shows a user all
 * there is to fix in one go.  Unknown keys are errors: a misspelt key
 * silently ignored is a setting silently not applied.
 *
 * libconfig 1.5 (Debian's) keeps every integer literal without an L
 * suffix in an int and silently wraps it (99999999999 reads as
 * 1215752191, 4294967296 as 0), and saturates 64-bit literals that are
 * too large.  So after parsing we re-read the file and pair every integer
 * literal in it with the integer setting libconfig made from it (both are
 * in document order, file by file): a literal that fits 64 bits replaces
 * the wrapped value (the setting becomes an INT64, for every reader of the
 * tree, plugins included); one that does not is remembered and reported
 * as out of range wherever it is used.  Newer libconfig versions promote
 * or refuse such literals themselves; the pairing then changes nothing.
 *
 * Strings are copied out of the libconfig tree; only `settings` points
 * into it.  Once the file is read, the tree is pruned to the jobs'
 * settings groups (prune_tree), which live as long as the struct
 * jr_config; the rest, inputs above all, is freed.
 */
#include "config.h"

#include <sys/stat.h>

#include <ctype.h>
#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

#define ONE_YEAR (365.0 * 86400)

/* An integer literal as written in a file. */
struct int_lit {
	char *text;
};

/* A file the tree's settings come from: the main file or an @include. */
struct cfg_file {
	const char *name;       /* as libconfig records it; NULL: main file */
	char *path;             /* for reading it and for messages */
	struct int_lit *lits;   /* its integer literals, in order */
	size_t nlits, litcap, next;
	bool lexed;
	bool checked;           /* an @include: its owner and mode checked */
};

/* An integer setting whose literal does not fit 64 bits. */
struct overflow {
	const config_setting_t *s;
	const char *text;       /* in a struct int_lit */
};

struct cfg_ctx {
	struct jr_config *cfg;
	struct errlist *errs;
	char *dir;              /* the config file's directory, absolute */
	const char *label;      /* "job 'x'" while in a job, else NULL */
	struct cfg_file *files;
	size_t nfiles;
	struct overflow *ovf;
	size_t novf;
	bool ints_failed;
	const config_setting_t **job_groups;    /* parallel to cfg->jobs */
	char **zones;           /* time zones already found valid */
	size_t nzones;
};

static void cfg_error(struct cfg_ctx *, const config_setting_t *,
		      const char *, ...) JR_PRINTFLIKE(3, 4);

/* ------------------------------------------------------------------ */
/* Files and messages                                                  */
/* ------------------------------------------------------------------ */

static struct cfg_file *
file_get(struct cfg_ctx *ctx, const char *name)
{
	struct cfg_file *f;

	for (size_t i = 0; i < ctx->nfiles; i++) {
		f = &ctx->files[i];
		if (f->name == name ||
		    (f->name && name && strcmp(f->name, name) == 0))
			return f;
	}
	ctx->files = xrealloc(ctx->files,
	    (ctx->nfiles + 1) * sizeof *ctx->files);
	f = &ctx->files[ctx->nfiles++];
	memset(f, 0, sizeof *f);
	f->name = name;
	/* libconfig 1.5 opens "@include NAME" as INCLUDE_DIR/NAME. */
	if (name == NULL)
		f->path = xstrdup(ctx->cfg->file);
	else if (ctx->dir != NULL)
		f->path = xasprintf("%s/%s", ctx->dir, name);
	else
		f->path = xstrdup(name);
	return f;
}

static const char *
setting_file(struct cfg_ctx *ctx, const config_setting_t *s)
{
	return file_get(ctx, s ? config_setting_source_file(s) : NULL)->path;
}

static void
cfg_error(struct cfg_ctx *ctx, const config_setting_t *s, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) == -1)
		fatalx("out of memory");
	va_end(ap);
	errlist_add(ctx->errs, "%s:%u: %s%s%s", setting_file(ctx, s),
		    s ? (unsigned)config_setting_source_line(s) : 0,
		    ctx->label ? ctx->label : "", ctx->label ? ": " : "", msg);
	free(msg);
}

/* config_setting_get_elem, with the index type config_setting_length
 * returns. */
static config_setting_t *
elem(const config_setting_t *s, int i)
{
	return config_setting_get_elem(s, (unsigned)i);
}

static const char *
type_name(const config_setting_t *s)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_GROUP:
		return "a group";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		return "an integer";
	case CONFIG_TYPE_FLOAT:
		return "a number";
	case CONFIG_TYPE_STRING:
		return "a string";
	case CONFIG_TYPE_BOOL:
		return "a boolean";
	case CONFIG_TYPE_ARRAY:
		return "an array";
	case CONFIG_TYPE_LIST:
		return "a list";
	}
	return "something else";
}

/* ------------------------------------------------------------------ */
/* Integer literals (see the top of the file)                          */
/* ------------------------------------------------------------------ */

static size_t
span(const char *p, const char *set)
{
	size_t n = 0;

	while (p[n] != '\0' && strchr(set, p[n]) != NULL)
		n++;
	return n;
}

#define DIGITS "0123456789"
#define XDIGITS "0123456789abcdefABCDEF"
#define LETTERS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

/* Length of an optional exponent at P ("e-5"); 0 if there is none. */
static size_t
exponent_len(const char *p)
{
	size_t n = 1, d;

	if (*p != 'e' && *p != 'E')
		return 0;
	if (p[n] == '+' || p[n] == '-')
		n++;
	d = span(p + n, DIGITS);
	return d == 0 ? 0 : n + d;
}

/* The longest number token at P, as libconfig's scanner (flex, longest
 * match) sees it; *IS_INT says whether it is an integer (any of integer,
 * integer64, hex, hex64) rather than a float.  0: not a number. */
static size_t
number_len(const char *p, bool *is_int)
{
	size_t sign = (*p == '+' || *p == '-'), d, n, f1 = 0, f2 = 0;

	*is_int = true;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') &&
	    span(p + 2, XDIGITS) > 0) {
		n = 2 + span(p + 2, XDIGITS);
		n += span(p + n, "L") > 2 ? 2 : span(p + n, "L");
		return n;
	}
	d = span(p + sign, DIGITS);
	/* float: [-+]?[0-9]*\.[0-9]*([eE][-+]?[0-9]+)? */
	if (p[sign + d] == '.') {
		f1 = sign + d + 1;
		f1 += span(p + f1, DIGITS);
		f1 += exponent_len(p + f1);
	}
	/* float: [-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+ */
	if (d > 0) {
		size_t e;

		f2 = sign + d;
		if (p[f2] == '.')
			f2 += 1 + span(p + f2 + 1, DIGITS);
		e = exponent_len(p + f2);
		f2 = e ? f2 + e : 0;
	}
	n = d > 0 ? sign + d : 0;
	if (n > 0)
		n += span(p + n, "L") > 2 ? 2 : span(p + n, "L");
	if (f1 > n || f2 > n) {
		*is_int = false;
		return f1 > f2 ? f1 : f2;
	}
	return n;
}

/* Collect the integer literals of SRC, skipping comments and strings the
 * way libconfig's scanner does. */
static void
lex_ints(struct cfg_file *f, const char *src)
{
	const char *p = src;

	while (*p != '\0') {
		size_t n;
		bool is_int;

		if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
			while (*p != '\0' && *p != '\n')
				p++;
		} else if (p[0] == '/' && p[1] == '*') {
			p += 2;
			while (*p != '\0' && !(p[0] == '*' && p[1] == '/'))
				p++;
			if (*p != '\0')
				p += 2;
		} else if (*p == '"') {
			/* Strings (and @include's file name): only \\ and
			 * \" can hide a quote. */
			p++;
			while (*p != '\0' && *p != '"') {
				if (p[0] == '\\' &&
				    (p[1] == '\\' || p[1] == '"'))
					p++;
				p++;
			}
			if (*p != '\0')
				p++;
		} else if (isalpha((unsigned char)*p) || *p == '*') {
			p++;
			p += span(p, "-_*" LETTERS DIGITS);
		} else if (strchr("+-." DIGITS, *p) != NULL &&
			   (n = number_len(p, &is_int)) > 0) {
			if (is_int) {
				struct int_lit *l;

				/* Doubling: a 10,000-job file has 100,000
				 * literals, and growing by one each is
				 * quadratic wherever realloc copies. */
				if (f->nlits == f->litcap) {
					f->litcap = f->litcap ? 2 * f->litcap : 64;
					f->lits = xrealloc(f->lits,
					    f->litcap * sizeof *f->lits);
				}
				l = &f->lits[f->nlits++];
				l->text = xmalloc(n + 1);
				memcpy(l->text, p, n);
				l->text[n] = '\0';
			}
			p += n;
		} else
			p++;
	}
}

static char *
read_whole_file(const char *path)
{
	FILE *fp;
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if ((fp = fopen(path, "re")) == NULL)
		return NULL;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = xrealloc(buf, cap);
		}
		n = fread(buf + len, 1, cap - len - 1, fp);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(fp)) {
		int saved = errno;

		fclose(fp);
		free(buf);
		errno = saved ? saved : EIO;
		return NULL;
	}
	fclose(fp);
	buf[len] = '\0';
	return buf;
}

/* The value of an integer literal; -1 when it does not fit 64 bits. */
static int
lit_value(const char *text, long long *v)
{
	size_t n = strlen(text);
	char *s;
	int rc = 0;

	while (n > 0 && text[n - 1] == 'L')
		n--;
	s = xmalloc(n + 1);
	memcpy(s, text, n);
	s[n] = '\0';
	errno = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		unsigned long long u = strtoull(s + 2, NULL, 16);

		if (errno == ERANGE || u > (unsigned long long)LLONG_MAX)
			rc = -1;
		*v = (long long)u;
	} else {
		*v = strtoll(s, NULL, 10);
		if (errno == ERANGE)
			rc = -1;
	}
	free(s);
	return rc;
}

static void
ints_fix(struct cfg_ctx *ctx, config_setting_t *s)
{
	struct cfg_file *f = file_get(ctx, config_setting_source_file(s));
	struct int_lit *l;
	long long v;
	bool big;

	if (!f->lexed) {
		char *src = read_whole_file(f->path);

		f->lexed = true;
		if (src == NULL) {
			cfg_error(ctx, s, "cannot re-read the file to check "
				  "its integers: %s", strerror(errno));
			ctx->ints_failed = true;
			return;
		}
		lex_ints(f, src);
		free(src);
	}
	if (f->nlits == 0)
		goto mismatch;
	if (f->next == f->nlits)
		f->next = 0;    /* the same file @included again */
	l = &f->lits[f->next++];
	big = lit_value(l->text, &v) == -1;

	/* What libconfig kept must agree wherever it could hold the value:
	 * otherwise our scan and libconfig's have parted ways. */
	if (!big && config_setting_type(s) == CONFIG_TYPE_INT &&
	    v >= INT_MIN && v <= INT_MAX && config_setting_get_int(s) != v)
		goto mismatch;
	if (!big && config_setting_type(s) == CONFIG_TYPE_INT64 &&
	    config_setting_get_int64(s) != v)
		goto mismatch;

	if (big) {
		ctx->ovf = xrealloc(ctx->ovf,
		    (ctx->novf + 1) * sizeof *ctx->ovf);
		ctx->ovf[ctx->novf].s = s;
		ctx->ovf[ctx->novf++].text = l->text;
	} else if (config_setting_type(s) == CONFIG_TYPE_INT &&
		   (v < INT_MIN || v > INT_MAX)) {
		/* libconfig has no call that changes a setting's type. */
		s->type = CONFIG_TYPE_INT64;
		s->value.llval = v;
	}
	return;

mismatch:
	cfg_error(ctx, s, "internal error: cannot match this integer with "
		  "the text of %s; please report this bug", f->path);
	ctx->ints_failed = true;
}

static void
ints_walk(struct cfg_ctx *ctx, config_setting_t *s)
{
	int n, type = config_setting_type(s);
	bool has64 = false;

	if (ctx->ints_failed)
		return;
	if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
		ints_fix(ctx, s);
		return;
	}
	if (!config_setting_is_aggregate(s))
		return;
	n = config_setting_length(s);
	for (int i = 0; i < n; i++) {
		config_setting_t *e = elem(s, i);

		ints_walk(ctx, e);
		if (config_setting_type(e) == CONFIG_TYPE_INT64)
			has64 = true;
	}
	/* An array holds one type: libconfig would refuse to read back
	 * "[ 1, 5000000000L ]". */
	if (type == CONFIG_TYPE_ARRAY && has64) {
		for (int i = 0; i < n; i++) {
			config_setting_t *e = elem(s, i);

			if (config_setting_type(e) == CONFIG_TYPE_INT) {
				long long v = config_setting_get_int(e);

				e->type = CONFIG_TYPE_INT64;
				e->value.llval = v;
			}
		}
	}
}

/* The literal of S if it does not fit 64 bits, else NULL. */
static const char *
ovf_text(struct cfg_ctx *ctx, const config_setting_t *s)
{
	for (size_t i = 0; i < ctx->novf; i++)
		if (ctx->ovf[i].s == s)
			return ctx->ovf[i].text;
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Typed values                                                        */
/* ------------------------------------------------------------------ */

static const char *
get_string(struct cfg_ctx *ctx, const config_setting_t *s, const char *key)
{
	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		cfg_error(ctx, s, "%s: expected a string, got %s", key,
			  type_name(s));
		return NULL;
	}
	return config_setting_get_string(s);
}

static int
get_bool(struct cfg_ctx *ctx, const config_setting_t *s, const char *key,
	 bool *out)
{
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		cfg_error(ctx, s, "%s: expected a boolean (true or false), "
			  "got %s", key, type_name(s));
		return -1;
	}
	*out = config_setting_get_bool(s) != 0;
	return 0;
}

static int
get_int(struct cfg_ctx *ctx, const config_setting_t *s, const char *key,
	long long min, long long max, long long *out)
{
	const char *big;
	long long v;

	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
		v = config_setting_get_int(s);
		break;
	case CONFIG_TYPE_INT64:
		v = config_setting_get_int64(s);
		break;
	default:
		cfg_error(ctx, s, "%s: expected an integer, got %s", key,
			  type_name(s));
		return -1;
	}
	if ((big = ovf_text(ctx, s)) != NULL) {
		cfg_error(ctx, s, "%s: %s is out of range (%lld..%lld)", key,
			  big, min, max);
		return -1;
	}
	if (v < min || v > max) {
		cfg_error(ctx, s, "%s: %lld is out of range (%lld..%lld)", key,
			  v, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

/* A duration: seconds as an integer or a float, or a string with units.
 * RANGE is MAX written for humans ("1h"). */
static int
get_duration(struct cfg_ctx *ctx, const config_setting_t *s, const char *key,
	     double max, const char *range, double *out)
{
	const char *big, *text;
	long long iv;
	double v;

	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		if ((big = ovf_text(ctx, s)) != NULL) {
			cfg_error(ctx, s, "%s: %s is out of range (0 to %s)",
				  key, big, range);
			return -1;
		}
		if (config_setting_type(s) == CONFIG_TYPE_INT)
			iv = config_setting_get_int(s);
		else
			iv = config_setting_get_int64(s);
		if (iv < 0 || (double)iv > max) {
			cfg_error(ctx, s, "%s: %lld is out of range (0 to %s)",
				  key, iv, range);
			return -1;
		}
		v = (double)iv;
		break;
	case CONFIG_TYPE_FLOAT:
		v = config_setting_get_float(s);
		if (!isfinite(v)) {
			cfg_error(ctx, s, "%s: not a finite number", key);
			return -1;
		}
		break;
	case CONFIG_TYPE_STRING:
		text = config_setting_get_string(s);
		if (duration_parse(text, &v) == -1) {
			if (errno == ERANGE)
				cfg_error(ctx, s, "%s: \"%s\" is out of range "
					  "(0 to %s)", key, text, range);
			else
				cfg_error(ctx, s, "%s: \"%s\" is not a duration "
					  "(seconds, or a number with a unit: "
					  "500ms, 5s, 2m, 1h, 1d)", key, text);
			return -1;
		}
		if (v > max) {
			cfg_error(ctx, s, "%s: \"%s\" is out of range (0 to %s)",
				  key, text, range);
			return -1;
		}
		*out = v;
		return 0;
	default:
		cfg_error(ctx, s, "%s: expected a duration (seconds, or a "
			  "string like \"5s\"), got %s", key, type_name(s));
		return -1;
	}
	if (v < 0 || v > max) {
		cfg_error(ctx, s, "%s: %g is out of range (0 to %s)", key, v,
			  range);
		return -1;
	}
	*out = v;
	return 0;
}

/* A path; relative ones are taken from the config file's directory. */
static int
get_path(struct cfg_ctx *ctx, const config_setting_t *s, const char *key,
	 char **out)
{
	const char *v = get_string(ctx, s, key);

	if (v == NULL)
		return -1;
	if (*v == '\0') {
		cfg_error(ctx, s, "%s: must not be empty", key);
		return -1;
	}
	free(*out);
	if (*v == '/')
		*out = xstrdup(v);
	else {
		while (v[0] == '.' && v[1] == '/')
			v += 2 + span(v + 2, "/");
		if (*v == '\0' || strcmp(v, ".") == 0)
			*out = xstrdup(ctx->dir);
		else
			*out = xasprintf("%s/%s", ctx->dir, v);
	}
	return 0;
}

/* The shortest text that reads back as D. */
static char *
float_text(double d)
{
	char buf[64];

	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	return xstrdup(buf);
}

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);

	return n >= 1 && n <= JOB_NAME_MAX &&
	    span(s, "_.-" LETTERS DIGITS) == n;
}

/* ------------------------------------------------------------------ */
/* Settings as text (for process-mode workers)                         */
/* ------------------------------------------------------------------ */

/*
 * libconfig's config_write prints floats with six significant digits
 * (0.30000000000000004 becomes 0.3), so a worker would see other settings
 * than the daemon validated.  This writer keeps every bit: floats in their
 * shortest exact form, integers with their hex format and L suffix.
 */
static void text_setting(FILE *, const config_setting_t *, int);

static void
text_string(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		switch (c) {
		case '"':
			fputs("\\\"", fp);
			break;
		case '\\':
			fputs("\\\\", fp);
			break;
		case '\n':
			fputs("\\n", fp);
			break;
		case '\r':
			fputs("\\r", fp);
			break;
		case '\t':
			fputs("\\t", fp);
			break;
		case '\f':
			fputs("\\f", fp);
			break;
		default:
			if (c < 0x20 || c == 0x7f)
				fprintf(fp, "\\x%02x", c);
			else
				fputc(c, fp);
		}
	}
	fputc('"', fp);
}

static void
text_members(FILE *fp, const config_setting_t *g, int depth)
{
	int n = config_setting_length(g);

	for (int i = 0; i < n; i++) {
		const config_setting_t *e = elem(g, i);

		fprintf(fp, "%*s%s = ", depth * 2, "", config_setting_name(e));
		text_setting(fp, e, depth);
		fputs(";\n", fp);
	}
}

static void
text_setting(FILE *fp, const config_setting_t *s, int depth)
{
	bool hex = config_setting_get_format(s) == CONFIG_FORMAT_HEX;
	long long v;
	double d;
	char *t;
	int n;

	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
		v = config_setting_get_int(s);
		if (hex && v >= 0)
			fprintf(fp, "0x%llX", v);
		else
			fprintf(fp, "%lld", v);
		break;
	case CONFIG_TYPE_INT64:
		v = config_setting_get_int64(s);
		if (hex && v >= 0)
			fprintf(fp, "0x%llXL", v);
		else
			fprintf(fp, "%lldL", v);
		break;
	case CONFIG_TYPE_FLOAT:
		d = config_setting_get_float(s);
		if (isinf(d)) {
			/* What 1e400 read as; it reads back the same. */
			fputs(d > 0 ? "1e999" : "-1e999", fp);
			break;
		}
		t = float_text(d);
		fputs(t, fp);
		/* "1" would read back as an integer. */
		if (strpbrk(t, ".eE") == NULL)
			fputs(".0", fp);
		free(t);
		break;
	case CONFIG_TYPE_STRING:
		text_string(fp, config_setting_get_string(s));
		break;
	case CONFIG_TYPE_BOOL:
		fputs(config_setting_get_bool(s) ? "true" : "false", fp);
		break;
	case CONFIG_TYPE_GROUP:
		fputs("{\n", fp);
		text_members(fp, s, depth + 1);
		fprintf(fp, "%*s}", depth * 2, "");
		break;
	case CONFIG_TYPE_ARRAY:
	case CONFIG_TYPE_LIST:
		fputs(config_setting_type(s) == CONFIG_TYPE_ARRAY ? "[ " : "( ",
		      fp);
		n = config_setting_length(s);
		for (int i = 0; i < n; i++) {
			if (i > 0)
				fputs(", ", fp);
			text_setting(fp, elem(s, i),
				     depth + 1);
		}
		fputs(config_setting_type(s) == CONFIG_TYPE_ARRAY ? " ]" : " )",
		      fp);
		break;
	}
}

/* GROUP's members as a libconfig text whose root holds them.  Caller
 * frees. */
static char *
settings_to_text(const config_setting_t *group)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *fp;

	if ((fp = open_memstream(&buf, &len)) == NULL)
		fatal("open_memstream");
	text_members(fp, group, 0);
	if (fclose(fp) != 0)
		fatal("open_memstream");
	return buf;
}

int
cfg_settings_from_text(const char *text, config_t *tree, char *err,
		       size_t errlen)
{
	config_init(tree);
	if (text == NULL)
		return 0;       /* no settings: an empty root */
	if (config_read_string(tree, text) == CONFIG_FALSE) {
		snprintf(err, errlen, "settings, line %d: %s",
			 config_error_line(tree), config_error_text(tree));
		/* Leave an empty tree: destroying it again is harmless. */
		config_destroy(tree);
		config_init(tree);
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */
/* ------------------------------------------------------------------ */

static void
job_name(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "name");

	if (v == NULL)
		return;
	if (!valid_name(v)) {
		cfg_error(ctx, s, "name: \"%s\" is not a valid name (1 to %d "
			  "of A-Z a-z 0-9 _ . -)", v, JOB_NAME_MAX);
		return;
	}
	job->name = xstrdup(v);
}

static void
job_plugin(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "plugin");

	if (v == NULL)
		return;
	if (!valid_name(v)) {
		cfg_error(ctx, s, "plugin: \"%s\" is not a valid plugin name "
			  "(1 to %d of A-Z a-z 0-9 _ . -)", v, JOB_NAME_MAX);
		return;
	}
	job->plugin_name = xstrdup(v);
}

static void
job_mode(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "mode");

	if (v == NULL)
		return;
	if (strcmp(v, "thread") == 0)
		job->mode = MODE_THREAD;
	else if (strcmp(v, "process") == 0)
		job->mode = MODE_PROCESS;
	else
		cfg_error(ctx, s, "mode: \"%s\" is not a mode (\"thread\" or "
			  "\"process\")", v);
}

static void
job_workers(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	long long v;

	if (get_int(ctx, s, "workers", 1, 1024, &v) == 0)
		job->workers = (int)v;
}

static void
job_schedule(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "schedule");
	char err[256];

	if (v == NULL)
		return;
	free(job->schedule);
	job->schedule = xstrdup(v);
	if (strcmp(v, "@start") == 0)
		job->sched = SCHED_START;
	else if (strcmp(v, "@manual") == 0)
		job->sched = SCHED_MANUAL;
	else if (strncmp(v, "@every", 6) == 0 &&
		 (v[6] == '\0' || isspace((unsigned char)v[6]))) {
		const char *p = v + 6;
		char *interval;
		size_t n;
		double d;

		p += span(p, " \t");
		n = strlen(p);
		while (n > 0 && isspace((unsigned char)p[n - 1]))
			n--;
		if (n == 0) {
			cfg_error(ctx, s, "schedule: \"%s\": missing the "
				  "interval (\"@every 10s\")", v);
			return;
		}
		interval = xmalloc(n + 1);
		memcpy(interval, p, n);
		interval[n] = '\0';
		if (duration_parse(interval, &d) == -1)
			cfg_error(ctx, s, "schedule: \"%s\": \"%s\" is %s", v,
				  interval, errno == ERANGE ? "out of range" :
				  "not a duration (500ms, 5s, 2m, 1h, 1d)");
		else if (d <= 0)
			cfg_error(ctx, s, "schedule: \"%s\": the interval must "
				  "be more than zero", v);
		else {
			job->sched = SCHED_EVERY;
			job->every_s = d;
		}
		free(interval);
	} else if ((job->cron = cron_parse(v, err, sizeof err)) != NULL)
		job->sched = SCHED_CRON;
	else
		cfg_error(ctx, s, "schedule: \"%s\": %s (expected \"@start\", "
			  "\"@manual\", \"@every DURATION\" or a cron "
			  "expression)", v, err);
}

/* The string form of one input, as written; NULL (reported) if it is
 * not a scalar. */
static char *
input_text(struct cfg_ctx *ctx, const config_setting_t *e, const char *what)
{
	const char *big;
	long long v;
	double d;

	switch (config_setting_type(e)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		if ((big = ovf_text(ctx, e)) != NULL) {
			cfg_error(ctx, e, "%s: %s is out of range "
				  "(not a 64-bit integer)", what, big);
			return NULL;
		}
		if (config_setting_type(e) == CONFIG_TYPE_INT)
			v = config_setting_get_int(e);
		else
			v = config_setting_get_int64(e);
		if (config_setting_get_format(e) == CONFIG_FORMAT_HEX && v >= 0)
			return xasprintf("0x%llX", v);
		return xasprintf("%lld", v);
	case CONFIG_TYPE_FLOAT:
		d = config_setting_get_float(e);
		if (!isfinite(d)) {
			cfg_error(ctx, e, "%s: not a finite number",
				  what);
			return NULL;
		}
		return float_text(d);
	case CONFIG_TYPE_STRING:
		return xstrdup(config_setting_get_string(e));
	case CONFIG_TYPE_BOOL:
		return xstrdup(config_setting_get_bool(e) ? "true" : "false");
	}
	cfg_error(ctx, e, "%s: expected a number, a string or a "
		  "boolean, got %s", what, type_name(e));
	return NULL;
}

static void
job_inputs(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	size_t n;

	if (!config_setting_is_array(s) && !config_setting_is_list(s)) {
		cfg_error(ctx, s, "inputs: expected an array [ ... ] or a list "
			  "( ... ), got %s", type_name(s));
		return;
	}
	n = (size_t)config_setting_length(s);
	job->has_inputs = true;
	job->ninputs = n;
	job->inputs = n > 0 ? xcalloc(n, sizeof *job->inputs) : NULL;
	for (size_t i = 0; i < n; i++) {
		char what[32];

		snprintf(what, sizeof what, "inputs[%zu]", i);
		job->inputs[i] = input_text(ctx, elem(s, i), what);
	}
}

static void
job_timeout(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_duration(ctx, s, "timeout", ONE_YEAR, "365d", &job->timeout_s);
}

static void
job_kill_grace(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_duration(ctx, s, "kill_grace", 3600, "1h", &job->kill_grace_s);
}

static void
job_overlap(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	static const char *const names[] = {
		[OVERLAP_SKIP] = "skip", [OVERLAP_QUEUE] = "queue",
		[OVERLAP_REPLACE] = "replace", [OVERLAP_ALLOW] = "allow",
	};
	const char *v = get_string(ctx, s, "overlap");

	if (v == NULL)
		return;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strcmp(v, names[i]) == 0) {
			job->overlap = (enum overlap_policy)i;
			return;
		}
	}
	cfg_error(ctx, s, "overlap: \"%s\" is not a policy (skip, queue, "
		  "replace or allow)", v);
}

static void
job_retries(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	long long v;

	if (get_int(ctx, s, "retries", 0, 100, &v) == 0)
		job->retries = (int)v;
}

static void
job_max_concurrent(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	long long v;

	if (get_int(ctx, s, "max_concurrent_runs", 1, 1024, &v) == 0)
		job->max_concurrent_runs = (int)v;
}

static void
job_retry_delay(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_duration(ctx, s, "retry_delay", 86400, "1d", &job->retry_delay_s);
}

static void
job_retry_max_delay(struct cfg_ctx *ctx, config_setting_t *s,
		    struct job_def *job)
{
	get_duration(ctx, s, "retry_max_delay", 86400, "1d",
		     &job->retry_max_delay_s);
}

/*
 * A zone is valid when cron.c can read it: a name under the zoneinfo
 * directory, an absolute path to a TZif file, or a POSIX TZ string.  Each
 * distinct zone is checked once per load: ten thousand jobs in one zone
 * read its file once.
 */
static void
job_timezone(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "timezone");
	struct cron_spec *any;
	char err[128];
	bool known = false;
	time_t t;

	if (v == NULL)
		return;
	for (size_t i = 0; i < ctx->nzones && !known; i++)
		known = strcmp(ctx->zones[i], v) == 0;
	if (!known) {
		if (*v == '\0') {
			cfg_error(ctx, s, "timezone: must not be empty (leave it "
				  "out for local time)");
			return;
		}
		if ((any = cron_parse("* * * * *", err, sizeof err)) == NULL)
			fatalx("cron_parse: %s", err);
		t = cron_next_fire(any, v, time(NULL));
		cron_free(any);
		if (t == (time_t)-1 && errno == EINVAL) {
			cfg_error(ctx, s, "timezone: \"%s\" is not a time zone (a "
				  "name such as \"Europe/Paris\" or \"UTC\", or a "
				  "POSIX TZ string)", v);
			return;
		}
		ctx->zones = xrealloc(ctx->zones,
		    (ctx->nzones + 1) * sizeof *ctx->zones);
		ctx->zones[ctx->nzones++] = xstrdup(v);
	}
	free(job->timezone);
	job->timezone = xstrdup(v);
}

static void
job_catchup(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "catchup");

	if (v == NULL)
		return;
	if (strcmp(v, "none") == 0)
		job->catchup = CATCHUP_NONE;
	else if (strcmp(v, "once") == 0)
		job->catchup = CATCHUP_ONCE;
	else
		cfg_error(ctx, s, "catchup: \"%s\" is not a policy (\"none\" or "
			  "\"once\")", v);
}

static void
job_history_keep(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	long long v;

	if (get_int(ctx, s, "history_keep", 1, 1000000, &v) == 0)
		job->history_keep = (int)v;
}

static void
job_enabled(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_bool(ctx, s, "enabled", &job->enabled);
}

static void
job_prestart(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_bool(ctx, s, "prestart", &job->prestart);
}

/* Report integer literals beyond 64 bits in settings: plugins read the
 * tree and could not tell. */
static void
settings_check(struct cfg_ctx *ctx, const config_setting_t *s,
	       const char *path)
{
	const char *big;
	int n;

	if ((big = ovf_text(ctx, s)) != NULL) {
		cfg_error(ctx, s, "%s: %s is out of range (not a 64-bit "
			  "integer)", path, big);
		return;
	}
	if (!config_setting_is_aggregate(s))
		return;
	n = config_setting_length(s);
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = elem(s, i);
		char *sub;

		if (config_setting_is_group(s))
			sub = xasprintf("%s.%s", path, config_setting_name(e));
		else
			sub = xasprintf("%s[%d]", path, i);
		settings_check(ctx, e, sub);
		free(sub);
	}
}

static void
job_settings(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	if (!config_setting_is_group(s)) {
		cfg_error(ctx, s, "settings: expected a group { ... }, got %s",
			  type_name(s));
		return;
	}
	settings_check(ctx, s, "settings");
	job->settings = s;
	job->settings_text = settings_to_text(s);
}

/* ------------------------------------------------------------------ */
/* Process mode: worker limits and identity                            */
/* ------------------------------------------------------------------ */

const char *const rlimit_names[JR_RLIMITS] = {
	[JR_RLIMIT_AS] = "as", [JR_RLIMIT_CPU] = "cpu",
	[JR_RLIMIT_NOFILE] = "nofile", [JR_RLIMIT_NPROC] = "nproc",
	[JR_RLIMIT_CORE] = "core",
};
const int rlimit_resources[JR_RLIMITS] = {
	[JR_RLIMIT_AS] = RLIMIT_AS, [JR_RLIMIT_CPU] = RLIMIT_CPU,
	[JR_RLIMIT_NOFILE] = RLIMIT_NOFILE, [JR_RLIMIT_NPROC] = RLIMIT_NPROC,
	[JR_RLIMIT_CORE] = RLIMIT_CORE,
};

/* A size: bytes as an integer, or a string with a unit ("512M").  MAX is
 * written for humans in RANGE. */
static int
get_size(struct cfg_ctx *ctx, const config_setting_t *s, const char *key,
	 uint64_t max, const char *range, uint64_t *out)
{
	const char *text;
	long long v;
	uint64_t b;

	if (config_setting_type(s) == CONFIG_TYPE_STRING) {
		text = config_setting_get_string(s);
		if (size_parse(text, &b) == -1 || b > max) {
			if (errno == EINVAL)
				cfg_error(ctx, s, "%s: \"%s\" is not a size (bytes, or "
					  "a number with K, M, G or T)", key, text);
			else
				cfg_error(ctx, s, "%s: \"%s\" is out of range (0 to %s)",
					  key, text, range);
			return -1;
		}
		*out = b;
		return 0;
	}
	if (config_setting_type(s) != CONFIG_TYPE_INT &&
	    config_setting_type(s) != CONFIG_TYPE_INT64) {
		cfg_error(ctx, s, "%s: expected a size (bytes, or a string like "
			  "\"512M\"), got %s", key, type_name(s));
		return -1;
	}
	if (get_int(ctx, s, key, 0, (long long)max, &v) == -1)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

static void
job_max_tasks(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	long long v;

	if (get_int(ctx, s, "max_tasks_per_worker", 0, 1000000000, &v) == 0)
		job->max_tasks_per_worker = (int)v;
}

static void
job_max_rss(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	get_size(ctx, s, "max_rss", (uint64_t)1 << 40, "1T", &job->max_rss);
}

static void
job_output_limit(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	uint64_t v;

	if (get_size(ctx, s, "output_limit", (uint64_t)64 << 20, "64M", &v) == 0)
		job->output_limit = (size_t)v;
}

static void
job_rlimits(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	int n;

	if (!config_setting_is_group(s)) {
		cfg_error(ctx, s, "rlimits: expected a group { as = ...; cpu = ...; }, "
			  "got %s", type_name(s));
		return;
	}
	n = config_setting_length(s);
	for (int i = 0; i < n; i++) {
		config_setting_t *e = elem(s, i);
		const char *key = config_setting_name(e);
		char *what;
		int k;

		for (k = 0; k < JR_RLIMITS; k++)
			if (strcmp(key, rlimit_names[k]) == 0)
				break;
		if (k == JR_RLIMITS) {
			cfg_error(ctx, e, "rlimits: unknown limit '%s' (as, cpu, nofile, "
				  "nproc or core)", key);
			continue;
		}
		what = xasprintf("rlimits.%s", key);
		if (config_setting_type(e) == CONFIG_TYPE_STRING &&
		    strcmp(config_setting_get_string(e), "unlimited") == 0) {
			job->rlimit[k] = INT64_MAX;
		} else if (k == JR_RLIMIT_AS || k == JR_RLIMIT_CORE) {
			uint64_t b;
			if (get_size(ctx, e, what, (uint64_t)1 << 50, "1024T", &b) == 0)
				job->rlimit[k] = (int64_t)b;
		} else if (k == JR_RLIMIT_CPU) {
			double secs;
			if (get_duration(ctx, e, what, ONE_YEAR, "365d", &secs) == 0)
				/* RLIMIT_CPU counts whole seconds: round up. */
				job->rlimit[k] = (int64_t)secs + ((double)(int64_t)secs < secs);
		} else {
			long long v;
			if (get_int(ctx, e, what, 0, 1 << 30, &v) == 0)
				job->rlimit[k] = v;
		}
		free(what);
	}
}

/*
 * The _r lookups: the daemon reads a reloaded config in a thread of its
 * own while the main thread may look up names too (the control socket's
 * group).  16 KiB holds any sane passwd or group entry.
 */
static void
job_user(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "user");
	struct passwd pwbuf, *pw = NULL;
	char buf[16384];
	int rc;

	if (v == NULL)
		return;
	rc = getpwnam_r(v, &pwbuf, buf, sizeof buf, &pw);
	if (pw == NULL) {
		cfg_error(ctx, s, "user: no user named '%s'%s%s", v,
			  rc ? ": " : "", rc ? strerror(rc) : "");
		return;
	}
	if (geteuid() != 0 && pw->pw_uid != geteuid()) {
		cfg_error(ctx, s, "user: switching to '%s' needs jobrund to run as "
			  "root", v);
		return;
	}
	free(job->user);
	job->user = xstrdup(v);
	job->uid = pw->pw_uid;
	if (job->group == NULL)
		job->gid = pw->pw_gid;
}

static void
job_group(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	const char *v = get_string(ctx, s, "group");
	struct group grbuf, *gr = NULL;
	char buf[16384];
	int rc;

	if (v == NULL)
		return;
	rc = getgrnam_r(v, &grbuf, buf, sizeof buf, &gr);
	if (gr == NULL) {
		cfg_error(ctx, s, "group: no group named '%s'%s%s", v,
			  rc ? ": " : "", rc ? strerror(rc) : "");
		return;
	}
	if (geteuid() != 0 && gr->gr_gid != getegid()) {
		cfg_error(ctx, s, "group: switching to '%s' needs jobrund to run "
			  "as root", v);
		return;
	}
	free(job->group);
	job->group = xstrdup(v);
	job->gid = gr->gr_gid;
}

static bool
valid_env_name(const char *s)
{
	if (!(isalpha((unsigned char)*s) || *s == '_'))
		return false;
	for (s++; *s; s++)
		if (!(isalnum((unsigned char)*s) || *s == '_'))
			return false;
	return true;
}

static void
job_env(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	int n;

	if (!config_setting_is_group(s)) {
		cfg_error(ctx, s, "env: expected a group { NAME = \"value\"; }, got %s",
			  type_name(s));
		return;
	}
	n = config_setting_length(s);
	job->has_env = true;
	job->env = xcalloc((size_t)n + 1, sizeof *job->env);
	for (int i = 0; i < n; i++) {
		config_setting_t *e = elem(s, i);
		const char *name = config_setting_name(e);
		char *value;

		if (!valid_env_name(name)) {
			cfg_error(ctx, e, "env: '%s' is not a variable name", name);
			continue;
		}
		if (strncmp(name, "JOBRUND_", 8) == 0) {
			cfg_error(ctx, e, "env: %s is set by jobrund itself", name);
			continue;
		}
		if (config_setting_is_aggregate(e)) {
			cfg_error(ctx, e, "env.%s: expected a string or a number, got %s",
				  name, type_name(e));
			continue;
		}
		char *what = xasprintf("env.%s", name);
		value = input_text(ctx, e, what);
		free(what);
		if (value == NULL)
			continue;
		job->env[job->nenv++] = xasprintf("%s=%s", name, value);
		free(value);
	}
}

static void
job_cwd(struct cfg_ctx *ctx, config_setting_t *s, struct job_def *job)
{
	struct stat st;

	if (get_path(ctx, s, "cwd", &job->cwd) == -1)
		return;
	if (stat(job->cwd, &st) == -1)
		cfg_error(ctx, s, "cwd: %s: %s", job->cwd, strerror(errno));
	else if (!S_ISDIR(st.st_mode))
		cfg_error(ctx, s, "cwd: %s is not a directory", job->cwd);
}

/* Keys that only a process-mode job can honour: a thread cannot have its
 * own limits, user, environment or directory. */
static const char *const process_only_keys[] = {
	"max_tasks_per_worker", "max_rss", "rlimits", "user", "group", "env",
	"cwd", "output_limit",
};

static void
check_process_only(struct cfg_ctx *ctx, config_setting_t *g, struct job_def *job)
{
	if (job->mode != MODE_THREAD)
		return;
	for (size_t i = 0; i < sizeof process_only_keys / sizeof process_only_keys[0]; i++) {
		config_setting_t *s = config_setting_get_member(g, process_only_keys[i]);
		if (s != NULL)
			cfg_error(ctx, s, "%s: applies to process mode only (threads "
				  "share the daemon's limits, identity, environment "
				  "and directory)", process_only_keys[i]);
	}
}

/* Keys that only make sense with some other key's value: an error, like
 * any key that would be silently ignored. */
static void
check_schedule_keys(struct cfg_ctx *ctx, config_setting_t *g,
		    struct job_def *job)
{
	config_setting_t *s;

	if (job->sched != SCHED_CRON) {
		if ((s = config_setting_get_member(g, "timezone")) != NULL)
			cfg_error(ctx, s, "timezone: applies to cron schedules only");
		if ((s = config_setting_get_member(g, "catchup")) != NULL)
			cfg_error(ctx, s, "catchup: applies to cron schedules only");
	}
	if (job->overlap != OVERLAP_ALLOW &&
	    (s = config_setting_get_member(g, "max_concurrent_runs")) != NULL)
		cfg_error(ctx, s, "max_concurrent_runs: applies to overlap = "
			  "\"allow\" only (the other policies run one at a time)");
	if (job->retry_max_delay_s < job->retry_delay_s) {
		/* Without a cap of its own, a long delay is its own cap. */
		s = config_setting_get_member(g, "retry_max_delay");
		if (s == NULL)
			job->retry_max_delay_s = job->retry_delay_s;
		else
			cfg_error(ctx, s, "retry_max_delay: %gs is less than "
				  "retry_delay (%gs)", job->retry_max_delay_s,
				  job->retry_delay_s);
	}
}

static const struct job_key {
	const char *name;
	void (*fn)(struct cfg_ctx *, config_setting_t *, struct job_def *);
} job_keys[] = {
	{ "name", job_name },
	{ "plugin", job_plugin },
	{ "mode", job_mode },
	{ "workers", job_workers },
	{ "schedule", job_schedule },
	{ "inputs", job_inputs },
	{ "timeout", job_timeout },
	{ "kill_grace", job_kill_grace },
	{ "overlap", job_overlap },
	{ "max_concurrent_runs", job_max_concurrent },
	{ "retries", job_retries },
	{ "retry_delay", job_retry_delay },
	{ "retry_max_delay", job_retry_max_delay },
	{ "timezone", job_timezone },
	{ "catchup", job_catchup },
	{ "history_keep", job_history_keep },
	{ "enabled", job_enabled },
	{ "prestart", job_prestart },
	{ "settings", job_settings },
	{ "max_tasks_per_worker", job_max_tasks },
	{ "max_rss", job_max_rss },
	{ "rlimits", job_rlimits },
	{ "user", job_user },
	{ "group", job_group },
	{ "env", job_env },
	{ "cwd", job_cwd },
	{ "output_limit", job_output_limit },
};

static void
job_parse(struct cfg_ctx *ctx, config_setting_t *g, size_t index,
	  struct job_def *job)
{
	static const char *const required[] = { "name", "plugin", "mode" };
	config_setting_t *s;
	const char *name = NULL;
	char *label;
	int n;

	job->workers = 1;
	job->sched = SCHED_START;
	job->schedule = xstrdup("@start");
	job->kill_grace_s = 5;
	job->overlap = OVERLAP_SKIP;
	job->max_concurrent_runs = JR_MAX_CONCURRENT_RUNS;
	job->retry_delay_s = JR_RETRY_DELAY;
	job->retry_max_delay_s = JR_RETRY_MAX_DELAY;
	job->catchup = CATCHUP_NONE;
	job->history_keep = 0;          /* the top-level value: see cfg_load */
	job->enabled = true;
	job->output_limit = 64 * 1024;
	for (int k = 0; k < JR_RLIMITS; k++)
		job->rlimit[k] = -1;
	job->line = (int)config_setting_source_line(g);
	job->file = setting_file(ctx, g);

	/* Every message names the job: by name if it has a good one. */
	s = config_setting_get_member(g, "name");
	if (s != NULL && config_setting_type(s) == CONFIG_TYPE_STRING)
		name = config_setting_get_string(s);
	if (name != NULL && valid_name(name))
		label = xasprintf("job '%s'", name);
	else
		label = xasprintf("job #%zu", index + 1);
	ctx->label = label;

	n = config_setting_length(g);
	for (int i = 0; i < n; i++) {
		const char *key;
		size_t k;

		s = elem(g, i);
		key = config_setting_name(s);
		for (k = 0; k < sizeof job_keys / sizeof job_keys[0]; k++) {
			if (strcmp(key, job_keys[k].name) == 0)
				break;
		}
		if (k == sizeof job_keys / sizeof job_keys[0])
			cfg_error(ctx, s, "unknown key '%s'", key);
		else
			job_keys[k].fn(ctx, s, job);
	}
	check_process_only(ctx, g, job);
	check_schedule_keys(ctx, g, job);
	for (size_t k = 0; k < sizeof required / sizeof required[0]; k++) {
		if (config_setting_get_member(g, required[k]) == NULL)
			cfg_error(ctx, g, "missing required key '%s'",
				  required[k]);
	}
	ctx->label = NULL;
	free(label);
}

static void
job_free(struct job_def *job)
{
	free(job->name);
	free(job->plugin_name);
	free(job->schedule);
	cron_free(job->cron);
	free(job->timezone);
	for (size_t i = 0; i < job->ninputs; i++)
		free(job->inputs[i]);
	free(job->inputs);
	free(job->settings_text);
	free(job->user);
	free(job->group);
	for (size_t i = 0; i < job->nenv; i++)
		free(job->env[i]);
	free(job->env);
	free(job->cwd);
}

/* FNV-1a: for the job-name table below. */
static size_t
name_hash(const char *name)
{
	uint64_t h = 14695981039346656037ULL;

	for (; *name != '\0'; name++)
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	return (size_t)h;
}

/*
 * The jobs list.  Duplicate names are found through an open-addressing
 * table of the names seen so far (indices into cfg->jobs, plus one; 0 is
 * an empty slot): comparing every pair cost 80% of loading ten thousand
 * jobs.
 */
static void
top_jobs(struct cfg_ctx *ctx, config_setting_t *s)
{
	struct jr_config *cfg = ctx->cfg;
	size_t n, mask, *seen;

	if (config_setting_is_array(s) && config_setting_length(s) == 0)
		return;         /* "jobs = [];": no jobs, said another way */
	if (!config_setting_is_list(s)) {
		cfg_error(ctx, s, "jobs: expected a list of groups "
			  "( { ... }, { ... } ), got %s", type_name(s));
		return;
	}
	n = (size_t)config_setting_length(s);
	if (n == 0)
		return;
	cfg->jobs = xcalloc(n, sizeof *cfg->jobs);
	ctx->job_groups = xcalloc(n, sizeof *ctx->job_groups);
	for (mask = 16; mask < 2 * n; mask *= 2)
		;
	seen = xcalloc(mask, sizeof *seen);
	mask--;
	for (size_t i = 0; i < n; i++) {
		config_setting_t *g = elem(s, i);
		struct job_def *job = &cfg->jobs[cfg->njobs];
		size_t h, k;

		if (!config_setting_is_group(g)) {
			cfg_error(ctx, g, "jobs[%zu]: expected a group { ... }, "
				  "got %s", i, type_name(g));
			continue;
		}
		ctx->job_groups[cfg->njobs++] = g;
		job_parse(ctx, g, i, job);
		if (job->name == NULL)
			continue;
		for (h = name_hash(job->name) & mask; seen[h] != 0;
		     h = (h + 1) & mask) {
			if (strcmp(cfg->jobs[seen[h] - 1].name, job->name) == 0)
				break;
		}
		if (seen[h] == 0) {
			seen[h] = cfg->njobs;   /* this job's index, plus one */
			continue;
		}
		k = seen[h] - 1;
		cfg_error(ctx, g, "job '%s': duplicate name, first defined at "
			  "%s:%u", job->name, setting_file(ctx, ctx->job_groups[k]),
			  (unsigned)config_setting_source_line(ctx->job_groups[k]));
	}
	free(seen);
}

/* ------------------------------------------------------------------ */
/* Top level                                                           */
/* ------------------------------------------------------------------ */

static void
top_plugin_dir(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_path(ctx, s, "plugin_dir", &ctx->cfg->plugin_dir);
}

static void
top_control_socket(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_path(ctx, s, "control_socket", &ctx->cfg->control_socket);
}

static void
top_state_dir(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_path(ctx, s, "state_dir", &ctx->cfg->state_dir);
}

static void
top_control_group(struct cfg_ctx *ctx, config_setting_t *s)
{
	const char *v = get_string(ctx, s, "control_group");

	if (v == NULL)
		return;
	if (*v == '\0') {
		cfg_error(ctx, s, "control_group: must not be empty");
		return;
	}
	free(ctx->cfg->control_group);
	ctx->cfg->control_group = xstrdup(v);
}

static void
top_control_readonly(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_bool(ctx, s, "control_readonly", &ctx->cfg->control_readonly);
}

static void
top_log_level(struct cfg_ctx *ctx, config_setting_t *s)
{
	const char *v = get_string(ctx, s, "log_level");
	int level;

	if (v == NULL)
		return;
	if ((level = log_level_from_name(v)) == -1) {
		cfg_error(ctx, s, "log_level: \"%s\" is not a level (debug, "
			  "info, notice, warning, err)", v);
		return;
	}
	ctx->cfg->log_level = level;
}

static void
top_shutdown_grace(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_duration(ctx, s, "shutdown_grace", 3600, "1h",
		     &ctx->cfg->shutdown_grace);
}

static void
top_history_keep(struct cfg_ctx *ctx, config_setting_t *s)
{
	long long v;

	if (get_int(ctx, s, "history_keep", 1, 1000000, &v) == 0)
		ctx->cfg->history_keep = (int)v;
}

static void
top_worker_factory(struct cfg_ctx *ctx, config_setting_t *s)
{
	get_bool(ctx, s, "worker_factory", &ctx->cfg->worker_factory);
}

static const struct top_key {
	const char *name;
	void (*fn)(struct cfg_ctx *, config_setting_t *);
} top_keys[] = {
	{ "plugin_dir", top_plugin_dir },
	{ "control_socket", top_control_socket },
	{ "state_dir", top_state_dir },
	{ "control_group", top_control_group },
	{ "control_readonly", top_control_readonly },
	{ "log_level", top_log_level },
	{ "shutdown_grace", top_shutdown_grace },
	{ "history_keep", top_history_keep },
	{ "worker_factory", top_worker_factory },
	{ "jobs", top_jobs },
};

/* The absolute directory of FILE. */
static char *
file_dir(const char *file)
{
	const char *slash = strrchr(file, '/');
	char *dir, *real;

	if (slash == NULL)
		dir = xstrdup(".");
	else if (slash == file)
		dir = xstrdup("/");
	else {
		dir = xmalloc((size_t)(slash - file) + 1);
		memcpy(dir, file, (size_t)(slash - file));
		dir[slash - file] = '\0';
	}
	if ((real = realpath(dir, NULL)) != NULL) {
		free(dir);
		return real;
	}
	if (*dir != '/') {
		char *cwd = getcwd(NULL, 0);

		if (cwd != NULL) {
			real = xasprintf("%s/%s", cwd, dir);
			free(cwd);
			free(dir);
			return real;
		}
	}
	return dir;
}

/* Whether a config file with status ST may be trusted: 0, or -1 with why
 * not added to ERRS.  It says which plugins and commands run with the
 * daemon's privileges, so only root or the daemon's user may write it. */
static int
file_trusted(struct cfg_ctx *ctx, const char *file, const struct stat *st)
{
	if (!S_ISREG(st->st_mode)) {
		errlist_add(ctx->errs, "%s: not a regular file", file);
		return -1;
	}
	if (st->st_uid != 0 && st->st_uid != geteuid()) {
		errlist_add(ctx->errs, "%s: owned by uid %lu, expected root or "
			    "uid %lu", file, (unsigned long)st->st_uid,
			    (unsigned long)geteuid());
		return -1;
	}
	if (st->st_mode & S_IWOTH) {
		errlist_add(ctx->errs, "%s: writable by others (chmod o-w)",
			    file);
		return -1;
	}
	return 0;
}

/* Open FILE for reading, refusing what others could have written. */
static FILE *
cfg_open(struct cfg_ctx *ctx, const char *file)
{
	struct stat st;
	FILE *fp;

	if ((fp = fopen(file, "re")) == NULL) {
		errlist_add(ctx->errs, "%s: %s", file, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(fp), &st) == -1) {
		errlist_add(ctx->errs, "%s: %s", file, strerror(errno));
		goto fail;
	}
	if (file_trusted(ctx, file, &st) == -1)
		goto fail;
	return fp;

fail:
	fclose(fp);
	return NULL;
}

/*
 * The files S and what it holds came from (libconfig opened the @include
 * ones itself) must pass the main file's checks too: an @include writable
 * by others is a config writable by others.  An included file that
 * defines nothing has no say, and is not looked at.
 */
static void
includes_check(struct cfg_ctx *ctx, const config_setting_t *s)
{
	const char *name = config_setting_source_file(s);
	int n;

	if (name != NULL) {
		struct cfg_file *f = file_get(ctx, name);
		struct stat st;

		if (!f->checked) {
			f->checked = true;
			if (stat(f->path, &st) == -1)
				errlist_add(ctx->errs, "%s: %s", f->path, strerror(errno));
			else
				(void)file_trusted(ctx, f->path, &st);
		}
	}
	if (!config_setting_is_aggregate(s))
		return;
	n = config_setting_length(s);
	for (int i = 0; i < n; i++)
		includes_check(ctx, elem(s, i));
}

/* Hand the files' paths to the config: jobs point at them, and
 * cfg_setting_path gives them to messages later. */
static void
keep_paths(struct cfg_ctx *ctx)
{
	struct jr_config *cfg = ctx->cfg;

	cfg->paths = xcalloc(ctx->nfiles, sizeof *cfg->paths);
	for (size_t i = 0; i < ctx->nfiles; i++) {
		cfg->paths[i].name = ctx->files[i].name;
		cfg->paths[i].path = ctx->files[i].path;
		ctx->files[i].path = NULL;
	}
	cfg->npaths = ctx->nfiles;
}

const char *
cfg_setting_path(const struct jr_config *cfg, const config_setting_t *s)
{
	const char *name = config_setting_source_file(s);

	for (size_t i = 0; cfg != NULL && i < cfg->npaths; i++) {
		const char *n = cfg->paths[i].name;

		if (n == name || (n && name && strcmp(n, name) == 0))
			return cfg->paths[i].path;
	}
	return name;
}

static void
ctx_free(struct cfg_ctx *ctx)
{
	for (size_t i = 0; i < ctx->nfiles; i++) {
		for (size_t k = 0; k < ctx->files[i].nlits; k++)
			free(ctx->files[i].lits[k].text);
		free(ctx->files[i].lits);
		free(ctx->files[i].path);
	}
	free(ctx->files);
	free(ctx->ovf);
	free(ctx->job_groups);
	free(ctx->dir);
	for (size_t i = 0; i < ctx->nzones; i++)
		free(ctx->zones[i]);
	free(ctx->zones);
}

/*
 * Free every part of the tree but the jobs' `settings` groups, which
 * plugins go on reading (with their file and line, for errors) as long as
 * the config is in force; everything else was copied out.  A config's
 * inputs are most of its tree: 200,000 of them held 15 MiB there, about
 * 80 bytes each, besides the 40 of their copies.
 */
static void
prune_tree(config_setting_t *root)
{
	for (int i = config_setting_length(root) - 1; i >= 0; i--) {
		config_setting_t *jobs = config_setting_get_elem(root, (unsigned)i);

		/* remove_elem fails only on an index out of range or a
		 * scalar parent: neither here. */
		if (strcmp(config_setting_name(jobs), "jobs") != 0 ||
		    !config_setting_is_list(jobs)) {
			(void)config_setting_remove_elem(root, (unsigned)i);
			continue;
		}
		for (int j = config_setting_length(jobs) - 1; j >= 0; j--) {
			config_setting_t *g = config_setting_get_elem(jobs, (unsigned)j);

			if (!config_setting_is_group(g))
				continue;
			/* Last first: nothing moves down in the group. */
			for (int k = config_setting_length(g) - 1; k >= 0; k--) {
				config_setting_t *m = config_setting_get_elem(g, (unsigned)k);

				if (strcmp(config_setting_name(m), "settings") != 0)
					(void)config_setting_remove_elem(g, (unsigned)k);
			}
		}
	}
}

struct jr_config *
cfg_load(const char *file, struct errlist *errs)
{
	struct jr_config *cfg;
	struct cfg_ctx ctx;
	config_setting_t *root;
	size_t nerrs = errs->n;
	FILE *fp;
	int n;

	cfg = xcalloc(1, sizeof *cfg);
	cfg->file = xstrdup(file);
	cfg->plugin_dir = xstrdup(JR_PLUGIN_DIR);
	cfg->control_socket = xstrdup(JR_RUN_DIR "/jobrund.sock");
	cfg->state_dir = xstrdup(JR_STATE_DIR);
	cfg->log_level = LOG_INFO;
	cfg->shutdown_grace = 10;
	cfg->history_keep = JR_HISTORY_KEEP;
	cfg->worker_factory = true;
	/* The tree is read in place: its settings point back at it. */
	config_init(&cfg->tree);

	memset(&ctx, 0, sizeof ctx);
	ctx.cfg = cfg;
	ctx.errs = errs;
	if ((fp = cfg_open(&ctx, file)) == NULL)
		goto fail;
	ctx.dir = file_dir(file);
	config_set_include_dir(&cfg->tree, ctx.dir);
	/* config_read, not config_read_file: settings of the main file then
	 * have no file name, those of @include files their own. */
	if (config_read(&cfg->tree, fp) == CONFIG_FALSE) {
		const char *efile = config_error_file(&cfg->tree);
		const char *etext = config_error_text(&cfg->tree);

		if (etext == NULL)
			etext = "cannot be read";
		/* libconfig's parser says "memory exhausted" when its stack
		 * of about 10,000 symbols is full: groups or lists nested
		 * some 2,000 to 3,000 deep. */
		errlist_add(errs, "%s:%d: %s%s", file_get(&ctx, efile)->path,
			    config_error_line(&cfg->tree), etext,
			    strcmp(etext, "memory exhausted") == 0 ?
			    " (nesting too deep for libconfig's parser)" : "");
		fclose(fp);
		goto fail;
	}
	fclose(fp);

	root = config_root_setting(&cfg->tree);
	includes_check(&ctx, root);
	ints_walk(&ctx, root);

	n = config_setting_length(root);
	for (int i = 0; i < n; i++) {
		config_setting_t *s = elem(root, i);
		const char *key = config_setting_name(s);
		size_t k;

		for (k = 0; k < sizeof top_keys / sizeof top_keys[0]; k++) {
			if (strcmp(key, top_keys[k].name) == 0)
				break;
		}
		if (k == sizeof top_keys / sizeof top_keys[0])
			cfg_error(&ctx, s, "unknown key '%s'", key);
		else
			top_keys[k].fn(&ctx, s);
	}
	if (errs->n > nerrs)
		goto fail;
	/* The top-level history_keep may come after the jobs. */
	for (size_t i = 0; i < cfg->njobs; i++)
		if (cfg->jobs[i].history_keep == 0)
			cfg->jobs[i].history_keep = cfg->history_keep;
	keep_paths(&ctx);
	ctx_free(&ctx);
	prune_tree(root);
	return cfg;

fail:
	ctx_free(&ctx);
	cfg_free(cfg);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Plugins                                                             */
/* ------------------------------------------------------------------ */

int
cfg_load_plugins(struct jr_config *cfg, struct errlist *errs)
{
	size_t nerrs = errs->n;

	if (cfg->plugins == NULL)
		cfg->plugins = pluginset_new(cfg->plugin_dir);
	for (size_t i = 0; i < cfg->njobs; i++) {
		struct job_def *job = &cfg->jobs[i];
		const struct jr_plugin *desc;
		struct plugin *p;
		struct jr_job hj;
		void *state = NULL;
		char err[1024];
		int rc;

		job->plugin = NULL;
		p = pluginset_get(cfg->plugins, job->plugin_name, err,
				  sizeof err);
		if (p == NULL) {
			errlist_add(errs, "%s:%d: job '%s': plugin '%s': %s",
				    job->file, job->line, job->name,
				    job->plugin_name, err);
			continue;
		}
		desc = loader_descriptor(p);
		if (job->mode == MODE_THREAD && job->workers > 1 &&
		    (desc->flags & JR_PLUGIN_THREAD_SAFE) == 0) {
			errlist_add(errs, "%s:%d: job '%s': plugin '%s' is not "
				    "thread-safe: use mode = \"process\" or "
				    "workers = 1", job->file, job->line,
				    job->name, job->plugin_name);
			continue;
		}

		/* Let the plugin validate its settings now, so that a bad
		 * one stops `jobrund -t` and a reload, not a run. */
		host_job_init(&hj, job, cfg, errs);
		rc = host_plugin_init(desc, &hj, &state);
		if (rc == 0) {
			if (desc->fini != NULL)
				desc->fini(&host_table, state);
			job->plugin = p;
		} else if (hj.nerrors == 0)
			errlist_add(errs, "%s:%d: job '%s': plugin '%s': init "
				    "failed: %s", job->file, job->line,
				    job->name, job->plugin_name, strerror(rc));
		host_job_release(&hj);
	}
	return errs->n > nerrs ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* The rest                                                            */
/* ------------------------------------------------------------------ */

void
cfg_free(struct jr_config *cfg)
{
	if (cfg == NULL)
		return;
	pluginset_free(cfg->plugins);
	for (size_t i = 0; i < cfg->njobs; i++)
		job_free(&cfg->jobs[i]);
	free(cfg->jobs);
	config_destroy(&cfg->tree);
	free(cfg->file);
	for (size_t i = 0; i < cfg->npaths; i++)
		free(cfg->paths[i].path);
	free(cfg->paths);
	free(cfg->plugin_dir);
	free(cfg->control_socket);
	free(cfg->state_dir);
	free(cfg->control_group);
	free(cfg);
}

struct job_def *
cfg_find_job(struct jr_config *cfg, const char *name)
{
	if (cfg == NULL || name == NULL)
		return NULL;
	for (size_t i = 0; i < cfg->njobs; i++) {
		if (cfg->jobs[i].name != NULL &&
		    strcmp(cfg->jobs[i].name, name) == 0)
			return &cfg->jobs[i];
	}
	return NULL;
}

const char *
mode_name(enum job_mode mode)
{
	switch (mode) {
	case MODE_THREAD:
		return "thread";
	case MODE_PROCESS:
		return "process";
	}
	return "?";
}
