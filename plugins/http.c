/*
 * http.c - the `http` plugin: fetch a URL per task with libcurl, the
 * I/O-bound workload.
 *
 *   settings = { method = "GET"; expect_status = "2xx"; timeout = 10; };
 *
 * The task's input is the URL (settings.url is used by a job without
 * inputs).  The output is one JSON object:
 *
 *   {"url":"http://host/x","status":200,"bytes":1234,"time_s":0.0123,
 *    "content_type":"text/html"}
 *
 * with "body" (the first 64 KiB of the response, as text) when
 * settings.include_body is true, and "redirect" when a 3xx response was
 * not followed.  A status outside settings.expect_status (default 2xx),
 * a body over settings.max_bytes, a connection refused, a DNS failure or a
 * timeout fail the task with the reason; the output still describes the
 * response when there was one.
 *
 * Settings are validated in init, so a bad method, URL, header or status
 * pattern is a FILE:LINE error at `jobrund -t` time.  Only http:// and
 * https:// URLs are accepted, redirects included (a task must not be able
 * to read file:// from a daemon running as root), and TLS certificates and
 * host names are verified unless settings.verify_tls is false.
 *
 * Threads.  curl_global_init is not thread-safe, so it runs once per
 * process under pthread_once (from init, which the daemon and the worker
 * call from one thread anyway) and is never undone: curl_global_cleanup
 * is not thread-safe either, and init and fini run several times in one
 * process (`-t`, reloads).  Every thread that runs tasks gets its own
 * multi and easy handle (a pthread key per job state; the key's destructor
 * frees them when a pool thread exits, and fini frees what is left), so
 * no handle is ever shared between threads, and keep-alive connections
 * and the DNS cache are reused from one task to the next.  CURLOPT_NOSIGNAL
 * keeps libcurl away from signals (the daemon blocks them for its
 * signalfd); SIGPIPE is ignored by both the daemon and the worker.
 *
 * Cancellation.  The transfer is driven with curl_multi_perform and
 * curl_multi_poll, waking at least every 20 ms to ask host->task_cancelled,
 * so a cancel or the job's timeout aborts it promptly even while the
 * server sends nothing (CURLOPT_XFERINFOFUNCTION alone is only called about
 * once a second on a stalled transfer).  Aborting removes the handle from
 * its multi, which closes the connection.
 *
 * The object is linked with -z nodelete: libcurl (and OpenSSL under it)
 * keep process-wide state, and a live thread's key destructor points into
 * this code, so the plugin stays mapped once loaded.  Should
 * pthread_key_create fail (keys are a finite resource), tasks use handles
 * of their own instead, without connection reuse.
 */
#include "config.h"

#include <sys/stat.h>

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobrund/plugin.h"

#define HTTP_POLL_MS            20      /* how often task_cancelled is asked */
#define HTTP_BODY_OUTPUT_MAX    (64 * 1024)     /* body kept in the output */
#define HTTP_MAX_BYTES_DEFAULT  (64LL * 1024 * 1024)
#define HTTP_MAX_REDIRECTS      10
#define HTTP_TIMEOUT_MAX_S      86400.0
#define HTTP_USER_AGENT         "jobrund-http/" PACKAGE_VERSION

/* An accepted status range, from "200", "2xx" or "200-299". */
struct http_range {
	long lo, hi;
};

struct http_state {
	char *method;                   /* one of http_methods */
	char *url;                      /* settings.url, or NULL */
	char *body;                     /* settings.body, or NULL */
	char *ca_file;                  /* settings.ca_file, or NULL */
	char *expect_text;              /* expect_status as written, for messages */
	struct curl_slist *headers;
	struct http_range *expect;
	size_t nexpect;
	long timeout_ms;                /* 0: none */
	long connect_timeout_ms;        /* 0: libcurl's default */
	long long max_bytes;
	int follow;
	int verify;
	int include_body;

	/* The handles of the threads that ran tasks (see the top). */
	pthread_key_t key;
	int key_made;                   /* else: handles per task */
	int lock_made;
	pthread_mutex_t lock;           /* guards handles */
	struct http_handle *handles;
};

/* One thread's handles. */
struct http_handle {
	struct http_state *st;
	CURLM *multi;
	CURL *easy;
	struct http_handle *prev, *next;
};

/* One transfer. */
struct http_xfer {
	const struct http_state *st;
	long long bytes;                /* body bytes received */
	int over_max;                   /* more than max_bytes arrived */
	char *body;                     /* the first bytes, with include_body */
	size_t body_len;
	char reason[64];                /* the last status line's reason phrase */
};

/* A growing output buffer. */
struct http_buf {
	char *p;
	size_t len, cap;
	int failed;
};

static const char *const http_methods[] = {
	"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL
};

static const char *const http_keys[] = {
	"url", "method", "headers", "body", "timeout", "connect_timeout",
	"expect_status", "max_bytes", "follow_redirects", "verify_tls",
	"ca_file", "include_body", NULL
};

static void http_handle_close(struct http_handle *);
static void http_handle_destroy(void *);

static pthread_once_t http_global_once = PTHREAD_ONCE_INIT;
static CURLcode http_global_rc = CURLE_FAILED_INIT;

static void
http_global_init(void)
{
	http_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- output ----------------------------------------------------------- */

static void
buf_add(struct http_buf *b, const char *s, size_t n)
{
	char *p;
	size_t cap;

	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		if ((p = realloc(b->p, cap)) == NULL) {
			b->failed = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
buf_str(struct http_buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

/* Length of a valid UTF-8 sequence at P (LEN bytes left), or 0. */
static size_t
utf8_len(const unsigned char *p, size_t len)
{
	unsigned int cp;
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = p[0] & 0x07;
	} else
		return 0;
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* Append S as a JSON string; invalid UTF-8 becomes U+FFFD. */
static void
buf_json(struct http_buf *b, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	char esc[8];
	size_t i = 0, n;

	buf_add(b, "\"", 1);
	while (i < len) {
		if (p[i] == '"' || p[i] == '\\') {
			esc[0] = '\\';
			esc[1] = (char)p[i];
			buf_add(b, esc, 2);
			i++;
		} else if (p[i] < 0x20) {
			switch (p[i]) {
			case '\n': buf_add(b, "\\n", 2); break;
			case '\r': buf_add(b, "\\r", 2); break;
			case '\t': buf_add(b, "\\t", 2); break;
			default:
				snprintf(esc, sizeof esc, "\\u%04x", p[i]);
				buf_add(b, esc, 6);
			}
			i++;
		} else if ((n = utf8_len(p + i, len - i)) == 0) {
			buf_add(b, "\xef\xbf\xbd", 3);
			i++;
		} else {
			buf_add(b, s + i, n);
			i += n;
		}
	}
	buf_add(b, "\"", 1);
}

/* --- settings ----------------------------------------------------------- */

/* Check URL: parsable, http or https, with a host.  0, or -1 and WHY. */
static int
http_check_url(const char *url, char *why, size_t len)
{
	CURLU *u;
	CURLUcode rc;
	char *scheme = NULL, *host = NULL;
	int ret = -1;

	if ((u = curl_url()) == NULL) {
		snprintf(why, len, "out of memory");
		return -1;
	}
	if ((rc = curl_url_set(u, CURLUPART_URL, url, 0)) != CURLUE_OK) {
		snprintf(why, len, "%s", curl_url_strerror(rc));
		goto out;
	}
	if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
		snprintf(why, len, "only http:// and https:// URLs are fetched");
		goto out;
	}
	if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    host[0] == '\0') {
		snprintf(why, len, "no host name");
		goto out;
	}
	ret = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return ret;
}

/* Parse one expect_status element: "200", "2xx" or "200-299". */
static int
parse_status(const char *s, struct http_range *r)
{
	char *end;
	long a, b;

	if (strlen(s) == 3 && s[0] >= '1' && s[0] <= '5' &&
	    (s[1] == 'x' || s[1] == 'X') && (s[2] == 'x' || s[2] == 'X')) {
		r->lo = (s[0] - '0') * 100;
		r->hi = r->lo + 99;
		return 0;
	}
	if (s[0] < '0' || s[0] > '9')
		return -1;
	a = strtol(s, &end, 10);
	b = a;
	if (*end == '-') {
		if (end[1] < '0' || end[1] > '9')
			return -1;
		b = strtol(end + 1, &end, 10);
	}
	if (*end != '\0' || a < 100 || a > 599 || b < a || b > 599)
		return -1;
	r->lo = a;
	r->hi = b;
	return 0;
}

/* A header line "Name: value": a token, a colon, no CR or LF. */
static int
header_ok(const char *h)
{
	const char *p;

	for (p = h; *p != '\0' && *p != ':'; p++)
		if (*p <= ' ' || *p >= 0x7f || strchr("\"(),/;<=>?@[\\]{}", *p))
			return 0;
	if (p == h || *p != ':')
		return 0;
	return strpbrk(p, "\r\n") == NULL;
}

static int
known_key(const char *k)
{
	for (size_t i = 0; http_keys[i] != NULL; i++)
		if (strcmp(k, http_keys[i]) == 0)
			return 1;
	return 0;
}

/* Read a number of seconds into *MS; 1 when it was bad (reported). */
static int
get_seconds(const struct jr_host *host, jr_job *job, const char *name,
    long *ms)
{
	double v;
	int r;

	r = host->setting_float(job, name, &v);
	if (r == ENOENT)
		return 0;
	if (r != 0)
		return 1;
	if (v <= 0 || v > HTTP_TIMEOUT_MAX_S) {
		host->setting_error(job, name, "%g is out of range: expected "
		    "a number of seconds above 0 and up to %.0f", v,
		    HTTP_TIMEOUT_MAX_S);
		return 1;
	}
	*ms = (long)(v * 1000.0 + 0.5);
	if (*ms == 0)
		*ms = 1;
	return 0;
}

/* Read a boolean into *V (left alone when absent); 1 when it was bad. */
static int
get_bool(const struct jr_host *host, jr_job *job, const char *name, int *v)
{
	int r = host->setting_bool(job, name, v);

	return r != 0 && r != ENOENT;
}

/* Copy a string setting into *V (NULL when absent); 1 when bad. */
static int
get_string(const struct jr_host *host, jr_job *job, const char *name,
    char **v, int *nomem)
{
	const char *s;
	int r;

	r = host->setting_string(job, name, &s);
	if (r == ENOENT)
		return 0;
	if (r != 0)
		return 1;
	if ((*v = strdup(s)) == NULL)
		*nomem = 1;
	return 0;
}

static void
http_free_state(struct http_state *st)
{
	struct http_handle *h;

	if (st == NULL)
		return;
	if (st->key_made) {
		pthread_setspecific(st->key, NULL);
		pthread_key_delete(st->key);
	}
	if (st->lock_made) {
		/* Pool threads have exited (their destructors ran); what is
		 * left belongs to threads still alive, e.g. the worker's. */
		while ((h = st->handles) != NULL) {
			st->handles = h->next;
			http_handle_close(h);
		}
		pthread_mutex_destroy(&st->lock);
	}
	curl_slist_free_all(st->headers);
	free(st->method);
	free(st->url);
	free(st->body);
	free(st->ca_file);
	free(st->expect_text);
	free(st->expect);
	free(st);
}

/* Validate the headers setting into ST->headers; 1 when bad. */
static int
get_headers(const struct jr_host *host, jr_job *job, struct http_state *st,
    int *nomem)
{
	const char *const *vals;
	struct curl_slist *l;
	size_t n;
	int r, bad = 0;

	r = host->setting_strings(job, "headers", &vals, &n);
	if (r == ENOENT)
		return 0;
	if (r != 0)
		return 1;
	for (size_t i = 0; i < n; i++) {
		if (!header_ok(vals[i])) {
			host->setting_error(job, "headers", "header %zu, "
			    "\"%.80s\", is not \"Name: value\" (a token, a "
			    "colon, no line breaks)", i + 1, vals[i]);
			bad = 1;
			continue;
		}
		if ((l = curl_slist_append(st->headers, vals[i])) == NULL) {
			*nomem = 1;
			return 0;
		}
		st->headers = l;
	}
	return bad;
}

/* Validate expect_status into ST->expect; 1 when bad. */
static int
get_expect(const struct jr_host *host, jr_job *job, struct http_state *st,
    int *nomem)
{
	static const char *const dflt[] = { "2xx", NULL };
	const char *const *vals = dflt;
	size_t n = 1, textlen = 0;
	int r, bad = 0;

	r = host->setting_strings(job, "expect_status", &vals, &n);
	if (r == ENOENT) {
		vals = dflt;
		n = 1;
	} else if (r != 0)
		return 1;
	else if (n == 0) {
		host->setting_error(job, "expect_status", "empty: expected "
		    "statuses such as \"200\", \"2xx\" or \"200-299\"");
		return 1;
	}
	if ((st->expect = calloc(n, sizeof *st->expect)) == NULL) {
		*nomem = 1;
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (parse_status(vals[i], &st->expect[i]) == -1) {
			host->setting_error(job, "expect_status", "\"%.40s\" "
			    "is not a status: expected a code from 100 to "
			    "599 (\"404\"), a class (\"2xx\") or a range "
			    "(\"200-299\"), as strings", vals[i]);
			bad = 1;
		}
		textlen += strlen(vals[i]) + 2;
	}
	st->nexpect = n;
	if ((st->expect_text = malloc(textlen + 1)) == NULL) {
		*nomem = 1;
		return 0;
	}
	st->expect_text[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strcat(st->expect_text, ", ");
		strcat(st->expect_text, vals[i]);
	}
	return bad;
}

static int
http_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *keys = host->setting_keys(job);
	struct http_state *st;
	struct stat sb;
	const char *s;
	char why[256];
	int64_t max;
	int bad = 0, nomem = 0, r, known;

	pthread_once(&http_global_once, http_global_init);
	if (http_global_rc != CURLE_OK) {
		host->log(job, JR_LOG_ERR, "http: curl_global_init: %s",
		    curl_easy_strerror(http_global_rc));
		return EIO;
	}

	for (size_t i = 0; keys != NULL && keys[i] != NULL; i++) {
		if (!known_key(keys[i])) {
			host->setting_error(job, keys[i], "unknown setting "
			    "\"%s\": http knows url, method, headers, body, "
			    "timeout, connect_timeout, expect_status, "
			    "max_bytes, follow_redirects, verify_tls, ca_file "
			    "and include_body", keys[i]);
			bad = 1;
		}
	}

	if ((st = calloc(1, sizeof *st)) == NULL)
		return ENOMEM;
	st->max_bytes = HTTP_MAX_BYTES_DEFAULT;
	st->verify = 1;

	/* method */
	r = host->setting_string(job, "method", &s);
	if (r == ENOENT)
		s = "GET";
	else if (r != 0) {
		bad = 1;
		s = "GET";
	}
	known = 0;
	for (size_t i = 0; http_methods[i] != NULL; i++)
		if (strcmp(s, http_methods[i]) == 0)
			known = 1;
	if (!known) {
		host->setting_error(job, "method", "unknown method \"%.40s\": "
		    "expected GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS "
		    "(in capitals)", s);
		bad = 1;
	}
	if ((st->method = strdup(known ? s : "GET")) == NULL)
		nomem = 1;

	/* url */
	bad |= get_string(host, job, "url", &st->url, &nomem);
	if (st->url != NULL && http_check_url(st->url, why, sizeof why) == -1) {
		host->setting_error(job, "url", "bad URL \"%.200s\": %s",
		    st->url, why);
		bad = 1;
	}

	/* body */
	bad |= get_string(host, job, "body", &st->body, &nomem);
	if (st->body != NULL && (strcmp(st->method, "GET") == 0 ||
	    strcmp(st->method, "HEAD") == 0)) {
		host->setting_error(job, "body", "a %s request has no body: "
		    "use method = \"POST\" (or PUT, PATCH, DELETE)",
		    st->method);
		bad = 1;
	}

	bad |= get_headers(host, job, st, &nomem);
	bad |= get_expect(host, job, st, &nomem);
	bad |= get_seconds(host, job, "timeout", &st->timeout_ms);
	bad |= get_seconds(host, job, "connect_timeout",
	    &st->connect_timeout_ms);

	r = host->setting_int(job, "max_bytes", &max);
	if (r == 0 && max < 1) {
		host->setting_error(job, "max_bytes", "%lld is out of range: "
		    "expected a positive number of bytes", (long long)max);
		bad = 1;
	} else if (r == 0)
		st->max_bytes = max;
	else if (r != ENOENT)
		bad = 1;

	bad |= get_bool(host, job, "follow_redirects", &st->follow);
	bad |= get_bool(host, job, "verify_tls", &st->verify);
	bad |= get_bool(host, job, "include_body", &st->include_body);

	bad |= get_string(host, job, "ca_file", &st->ca_file, &nomem);
	if (st->ca_file != NULL && stat(st->ca_file, &sb) == -1) {
		host->setting_error(job, "ca_file", "\"%.200s\": %s",
		    st->ca_file, strerror(errno));
		bad = 1;
	} else if (st->ca_file != NULL && !S_ISREG(sb.st_mode)) {
		host->setting_error(job, "ca_file", "\"%.200s\" is not a "
		    "regular file", st->ca_file);
		bad = 1;
	}

	if (nomem) {
		http_free_state(st);
		return ENOMEM;
	}
	if (bad) {
		http_free_state(st);
		return EINVAL;
	}
	if (!st->verify)
		host->log(job, JR_LOG_WARNING, "http: TLS verification is off "
		    "(settings.verify_tls = false)");

	if ((r = pthread_mutex_init(&st->lock, NULL)) != 0) {
		http_free_state(st);
		return r;
	}
	st->lock_made = 1;
	if ((r = pthread_key_create(&st->key, http_handle_destroy)) != 0)
		host->log(job, JR_LOG_NOTICE, "http: pthread_key_create: %s: "
		    "libcurl handles per task (no connection reuse)",
		    strerror(r));
	else
		st->key_made = 1;
	*state = st;
	return 0;
}

static void
http_fini(const struct jr_host *host, void *state)
{
	http_free_state(state);
}

/* --- handles ------------------------------------------------------------ */

static struct http_handle *
http_handle_new(struct http_state *st)
{
	struct http_handle *h;

	if ((h = calloc(1, sizeof *h)) == NULL)
		return NULL;
	h->st = st;
	if ((h->multi = curl_multi_init()) == NULL ||
	    (h->easy = curl_easy_init()) == NULL) {
		curl_multi_cleanup(h->multi);
		free(h);
		return NULL;
	}
	return h;
}

static void
http_handle_close(struct http_handle *h)
{
	curl_easy_cleanup(h->easy);
	curl_multi_cleanup(h->multi);
	free(h);
}

/* The key's destructor: a pool thread is exiting. */
static void
http_handle_destroy(void *arg)
{
	struct http_handle *h = arg;
	struct http_state *st = h->st;

	pthread_mutex_lock(&st->lock);
	if (h->prev != NULL)
		h->prev->next = h->next;
	else
		st->handles = h->next;
	if (h->next != NULL)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&st->lock);
	http_handle_close(h);
}

/* This thread's handles for ST, made on first use; without a key, new
 * ones that the caller closes. */
static struct http_handle *
http_handle_get(struct http_state *st)
{
	struct http_handle *h;

	if (!st->key_made)
		return http_handle_new(st);
	if ((h = pthread_getspecific(st->key)) != NULL)
		return h;
	if ((h = http_handle_new(st)) == NULL)
		return NULL;
	if (pthread_setspecific(st->key, h) != 0) {
		http_handle_close(h);
		return NULL;
	}
	pthread_mutex_lock(&st->lock);
	h->next = st->handles;
	if (h->next != NULL)
		h->next->prev = h;
	st->handles = h;
	pthread_mutex_unlock(&st->lock);
	return h;
}

/* --- a transfer --------------------------------------------------------- */

static size_t
http_write(char *data, size_t size, size_t n, void *arg)
{
	struct http_xfer *x = arg;
	size_t len = size * n, keep;
	char *p;

	x->bytes += (long long)len;
	if (x->bytes > x->st->max_bytes) {
		x->over_max = 1;
		return 0;       /* CURLE_WRITE_ERROR: stop the transfer */
	}
	if (x->st->include_body && x->body_len < HTTP_BODY_OUTPUT_MAX) {
		keep = HTTP_BODY_OUTPUT_MAX - x->body_len;
		if (keep > len)
			keep = len;
		if (x->body == NULL &&
		    (x->body = malloc(HTTP_BODY_OUTPUT_MAX)) == NULL)
			return 0;
		p = x->body + x->body_len;
		memcpy(p, data, keep);
		x->body_len += keep;
	}
	return len;
}

/* Keep the reason phrase of each status line ("HTTP/1.1 404 Not Found"). */
static size_t
http_header(char *data, size_t size, size_t n, void *arg)
{
	struct http_xfer *x = arg;
	size_t len = size * n, i, j;

	if (len < 12 || strncmp(data, "HTTP/", 5) != 0)
		return len;
	/* Skip "HTTP/x.y NNN " */
	for (i = 5; i < len && data[i] != ' '; i++)
		;
	for (i++; i < len && data[i] != ' ' && data[i] != '\r'; i++)
		;
	if (i < len && data[i] == ' ')
		i++;
	for (j = 0; i < len && data[i] != '\r' && data[i] != '\n' &&
	    j + 1 < sizeof x->reason; i++)
		x->reason[j++] = (char)((unsigned char)data[i] < 0x20 ||
		    (unsigned char)data[i] >= 0x7f ? '?' : data[i]);
	x->reason[j] = '\0';
	return len;
}

static CURLcode
http_setopt(const struct http_state *st, CURL *e, const char *url,
    struct http_xfer *x, char *errbuf)
{
	CURLcode c = CURLE_OK;

#define SET(opt, val) do {                                              \
	if (c == CURLE_OK)                                              \
		c = curl_easy_setopt(e, opt, val);                      \
} while (0)
	SET(CURLOPT_URL, url);
	SET(CURLOPT_ERRORBUFFER, errbuf);
	SET(CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500     /* 7.85.0 */
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
	SET(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	SET(CURLOPT_USERAGENT, HTTP_USER_AGENT);
	SET(CURLOPT_WRITEFUNCTION, http_write);
	SET(CURLOPT_WRITEDATA, x);
	SET(CURLOPT_HEADERFUNCTION, http_header);
	SET(CURLOPT_HEADERDATA, x);
	SET(CURLOPT_FOLLOWLOCATION, (long)st->follow);
	SET(CURLOPT_MAXREDIRS, (long)HTTP_MAX_REDIRECTS);
	SET(CURLOPT_SSL_VERIFYPEER, (long)st->verify);
	SET(CURLOPT_SSL_VERIFYHOST, st->verify ? 2L : 0L);
	if (st->ca_file != NULL)
		SET(CURLOPT_CAINFO, st->ca_file);
	if (st->timeout_ms > 0)
		SET(CURLOPT_TIMEOUT_MS, st->timeout_ms);
	if (st->connect_timeout_ms > 0)
		SET(CURLOPT_CONNECTTIMEOUT_MS, st->connect_timeout_ms);
	SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)st->max_bytes);
	if (st->headers != NULL)
		SET(CURLOPT_HTTPHEADER, st->headers);

	if (strcmp(st->method, "HEAD") == 0)
		SET(CURLOPT_NOBODY, 1L);
	else if (strcmp(st->method, "POST") == 0 || st->body != NULL) {
		/* POST, or another method with a body: POSTFIELDS sends it,
		 * CUSTOMREQUEST renames the request. */
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(st->body ?
		    strlen(st->body) : 0));
		SET(CURLOPT_POSTFIELDS, st->body ? st->body : "");
		if (strcmp(st->method, "POST") != 0)
			SET(CURLOPT_CUSTOMREQUEST, st->method);
	} else if (strcmp(st->method, "GET") != 0)
		SET(CURLOPT_CUSTOMREQUEST, st->method);
#undef SET
	return c;
}

static int
status_expected(const struct http_state *st, long status)
{
	for (size_t i = 0; i < st->nexpect; i++)
		if (status >= st->expect[i].lo && status <= st->expect[i].hi)
			return 1;
	return 0;
}

/* The output object: what is known about the response. */
static int
http_output(const struct jr_host *host, jr_task *task, CURL *e,
    const struct http_xfer *x, long status)
{
	struct http_buf b = { 0 };
	curl_off_t us = 0;
	char *s = NULL, num[64];
	int r;

	buf_str(&b, "{\"url\":");
	if (curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &s) != CURLE_OK)
		s = NULL;
	buf_json(&b, s ? s : "", s ? strlen(s) : 0);
	curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &us);
	snprintf(num, sizeof num, ",\"status\":%ld,\"bytes\":%lld,"
	    "\"time_s\":%.6f", status, x->bytes, (double)us / 1e6);
	buf_str(&b, num);
	s = NULL;
	if (curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &s) == CURLE_OK &&
	    s != NULL) {
		buf_str(&b, ",\"content_type\":");
		buf_json(&b, s, strlen(s));
	}
	s = NULL;
	if (curl_easy_getinfo(e, CURLINFO_REDIRECT_URL, &s) == CURLE_OK &&
	    s != NULL) {
		buf_str(&b, ",\"redirect\":");
		buf_json(&b, s, strlen(s));
	}
	if (x->st->include_body) {
		buf_str(&b, ",\"body\":");
		buf_json(&b, x->body ? x->body : "", x->body_len);
		if (x->bytes > (long long)x->body_len)
			buf_str(&b, ",\"body_truncated\":true");
	}
	buf_str(&b, "}");
	if (b.failed) {
		free(b.p);
		return ENOMEM;
	}
	r = host->task_output(task, b.p, b.len);
	free(b.p);
	return r;
}

/* Fetch URL with H; returns 0 or an errno value, with task_error set. */
static int
http_fetch(const struct jr_host *host, const struct http_state *st,
    jr_task *task, struct http_handle *h, const char *url)
{
	struct http_xfer x;
	char errbuf[CURL_ERROR_SIZE];
	CURLcode cc = CURLE_OK;
	CURLMcode mc;
	CURLMsg *msg;
	long status = 0, oserr = 0;
	int running = 1, cancelled = 0, done = 0, ret, left;
	double start;

	memset(&x, 0, sizeof x);
	x.st = st;
	errbuf[0] = '\0';
	curl_easy_reset(h->easy);
	if ((cc = http_setopt(st, h->easy, url, &x, errbuf)) != CURLE_OK) {
		host->task_error(task, "libcurl refused an option: %s",
		    curl_easy_strerror(cc));
		return EINVAL;
	}
	if ((mc = curl_multi_add_handle(h->multi, h->easy)) != CURLM_OK) {
		host->task_error(task, "curl_multi_add_handle: %s",
		    curl_multi_strerror(mc));
		return EIO;
	}

	start = now_s();
	while (!done) {
		if (host->task_cancelled(task)) {
			cancelled = 1;
			break;
		}
		mc = curl_multi_perform(h->multi, &running);
		if (mc == CURLM_OK && running > 0)
			mc = curl_multi_poll(h->multi, NULL, 0, HTTP_POLL_MS,
			    NULL);
		if (mc != CURLM_OK) {
			host->task_error(task, "%s %s: %s", st->method, url,
			    curl_multi_strerror(mc));
			ret = EIO;
			goto out;
		}
		while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
			if (msg->msg == CURLMSG_DONE &&
			    msg->easy_handle == h->easy) {
				cc = msg->data.result;
				done = 1;
			}
		}
		if (!done && running == 0) {
			/* Not expected: libcurl always says how it ended. */
			cc = CURLE_RECV_ERROR;
			done = 1;
		}
	}
	curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(h->easy, CURLINFO_OS_ERRNO, &oserr);

	if (status > 0 && http_output(host, task, h->easy, &x, status) ==
	    ENOMEM) {
		ret = ENOMEM;
		host->task_error(task, "out of memory");
	} else if (cancelled) {
		host->task_error(task, "%s %s: cancelled after %.2fs, %lld "
		    "bytes received", st->method, url, now_s() - start,
		    x.bytes);
		ret = ECANCELED;
	} else if (x.over_max) {
		host->task_error(task, "%s %s: the response is over "
		    "settings.max_bytes (%lld bytes)", st->method, url,
		    st->max_bytes);
		ret = EFBIG;
	} else if (cc == CURLE_FILESIZE_EXCEEDED) {
		host->task_error(task, "%s %s: the response announces more "
		    "than settings.max_bytes (%lld bytes)", st->method, url,
		    st->max_bytes);
		ret = EFBIG;
	} else if (cc == CURLE_OPERATION_TIMEDOUT) {
		host->task_error(task, "%s %s: timed out after %.2fs "
		    "(settings.timeout = %gs): %s", st->method, url,
		    now_s() - start, (double)st->timeout_ms / 1000.0,
		    errbuf[0] ? errbuf : curl_easy_strerror(cc));
		ret = ETIMEDOUT;
	} else if (cc != CURLE_OK) {
		host->task_error(task, "%s %s: %s%s%s%s", st->method, url,
		    errbuf[0] ? errbuf : curl_easy_strerror(cc),
		    oserr ? " (" : "", oserr ? strerror((int)oserr) : "",
		    oserr ? ")" : "");
		ret = oserr ? (int)oserr : EIO;
	} else if (!status_expected(st, status)) {
		char *redirect = NULL;

		curl_easy_getinfo(h->easy, CURLINFO_REDIRECT_URL, &redirect);
		host->task_error(task, "%s %s: HTTP status %ld%s%s, expected "
		    "%s%s%s%s", st->method, url, status, x.reason[0] ? " " : "",
		    x.reason, st->expect_text,
		    redirect ? " (a redirect to " : "", redirect ? redirect : "",
		    redirect ? ": set follow_redirects = true to follow it)" :
		    "");
		ret = EIO;
	} else
		ret = 0;

out:
	/* Removing an unfinished transfer closes its connection. */
	curl_multi_remove_handle(h->multi, h->easy);
	free(x.body);
	return ret;
}

static int
http_run(const struct jr_host *host, void *state, jr_task *task)
{
	struct http_state *st = state;
	const char *url = host->task_input(task);
	struct http_handle *h;
	char why[256];
	int ret;

	if (url == NULL)
		url = st->url;
	if (url == NULL) {
		host->task_error(task, "http needs a URL: give the job inputs "
		    "(one URL each) or settings.url");
		return EINVAL;
	}
	if (http_check_url(url, why, sizeof why) == -1) {
		host->task_error(task, "bad URL \"%.200s\": %s", url, why);
		return EINVAL;
	}
	if ((h = http_handle_get(st)) == NULL) {
		host->task_error(task, "cannot create a libcurl handle");
		return ENOMEM;
	}
	ret = http_fetch(host, st, task, h, url);
	if (!st->key_made)
		http_handle_close(h);
	return ret;
}

JR_PLUGIN_DEFINE(
	.name = "http",
	.version = "1.0",
	.description = "fetch the input's URL with libcurl; output status, "
	    "bytes and time as JSON",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.init = http_init,
	.run = http_run,
	.fini = http_fini,
);
