/*
 * ctl.c - the control socket: the daemon's end of jobrunctl.
 *
 * The socket.  A UNIX stream socket at the config's control_socket, mode
 * 0660 and group control_group, in a directory only its owner and that
 * group can enter (0750), so that the file system already keeps others
 * out.  With control_readonly = true every local user must reach it, so
 * the socket is 0666 and its directory 0755.  Either way every request is
 * checked again against the peer's credentials (SO_PEERCRED): root, the
 * daemon's own user and members of control_group (by the peer's gid or
 * its supplementary groups) may do everything; with control_readonly
 * anyone else may use status, show, workers, history and version; nobody
 * else anything.  A loosened mode therefore lets nobody in.  A directory
 * that does not exist is created; one that holds other files (/run) or is
 * sticky (/tmp) is shared, and its mode is left alone; one owned by
 * another user (not root) is refused, since its owner could replace the
 * socket.  At start-up a socket that accepts a connection belongs to a
 * live jobrund, which is an error; one that refuses is stale and is
 * replaced.  The socket is bound under a tight umask and only then given
 * its group and mode.  A reload that changes control_group or
 * control_readonly is applied to both; control_socket takes a restart.
 *
 * The protocol, version CTL_PROTO_VERSION (jobrund.h: bump it when the
 * messages change).  Line-delimited JSON: every message is one JSON
 * object on one line, ended by '\n' (JSON escapes newlines inside
 * strings, so a line is a message).  A request is at most
 * CTL_MAX_REQUEST bytes:
 *
 *   {"v":1,"cmd":"status"}
 *   {"v":1,"cmd":"show","job":"NAME"}
 *   {"v":1,"cmd":"run","job":"NAME","wait":true}
 *   {"v":1,"cmd":"cancel","job":"NAME"}
 *   {"v":1,"cmd":"kill","job":"NAME","signal":15}
 *   {"v":1,"cmd":"workers"}                (optional "job")
 *   {"v":1,"cmd":"history","job":"NAME","n":10}
 *   {"v":1,"cmd":"reload"}
 *   {"v":1,"cmd":"version"}
 *
 * Every request gets exactly one reply, its last message:
 *
 *   {"v":1,"type":"reply","ok":true,"data":{...}}
 *   {"v":1,"type":"reply","ok":false,"error":"why","errors":["FILE:LINE: ..."]}
 *
 * ("errors" only from a failed reload, whose reply comes once the new
 * file is applied or refused).  `run` with "wait" first sends
 * {"v":1,"type":"started","job":..,"run":N,"tasks":M}, then one
 * {"v":1,"type":"result","result":{...}} per task as it finishes (the
 * object is the result shape of design.md, as result_write_json writes
 * it), then the reply.  A connection may carry several requests, one
 * after another; they are answered in order.  A malformed request is
 * answered with an error and the connection goes on; an oversized one is
 * answered with an error and the connection is closed (the rest of the
 * line cannot be told from the next request).  Cutting the input into
 * lines and decoding a request is ctlproto.c's: pure functions, fuzzed.
 *
 * Serving.  Everything runs in the main loop and nothing blocks it: the
 * listening socket and the clients are non-blocking, each client has its
 * own input and output buffers, at most CTL_ACCEPT_BATCH connections are
 * accepted per wake-up so a flood cannot starve scheduling, and a client
 * that sends no complete request (or reads none of its replies) for
 * CTL_IDLE_TIMEOUT seconds is dropped (tests shorten it with the
 * environment variable JOBRUND_CTL_IDLE_TIMEOUT).  Clients get at most
 * half the descriptors (RLIMIT_NOFILE), the jobs keep the rest.  Running
 * out of descriptors stops accepting (the listening socket leaves the
 * epoll set) and retries on a timer, instead of spinning on a socket
 * that stays readable; the timers this needs exist from the start, since
 * making one takes a descriptor.
 *
 * ctl.c also keeps, per job name, the task results of its last finished
 * run and what its running runs have done so far (`show`, `status`): it
 * observes every run through run_observe.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "jobrund.h"

#define CTL_IDLE_TIMEOUT        30.0    /* seconds without a request */
#define CTL_MAX_CLIENTS         1024
#define CTL_MAX_OUTPUT          (64u * 1024 * 1024)     /* unread replies */
#define CTL_ACCEPT_BATCH        64      /* connections per wake-up */
#define CTL_READ_BATCH          (64 * 1024)             /* bytes per wake-up */
#define CTL_RETRY_ACCEPT        1.0     /* seconds, after EMFILE */
#define CTL_HISTORY_DEFAULT     10      /* runs `history` lists */

enum ctl_access { CTL_NONE, CTL_READ, CTL_ALL };

struct ctl_waiter;

struct ctl_client {
	int fd;
	unsigned long id;
	uid_t uid;                      /* from SO_PEERCRED at accept, for */
	pid_t pid;                      /* log lines about the connection */
	struct loop_watch *watch;
	uint32_t events;
	char *in;                       /* a partial request line */
	size_t inlen, incap;
	char *out;                      /* replies not yet written */
	size_t outlen, outoff;
	double active;                  /* mono_now() of the last progress */
	struct ctl_waiter *waiter;      /* a `run --wait` or reload under way */
	enum ctl_access access;         /* the current request's peer's */
	bool dispatching;               /* in ctl_process_input */
	bool kick;                      /* input to look at again (ctl_kick) */
	bool eof;                       /* the client closed its side */
	bool closing;                   /* close once the output is written */
	bool draining;                  /* closing: reading until EOF */
	bool dead;
	struct ctl_client *prev, *next;
};

/* A client waiting for a run's results, or for a reload.  Freed when
 * that is over; its client may go first (c becomes NULL). */
struct ctl_waiter {
	struct ctl_client *c;
	uint64_t run;
};

/* One run, as ctl.c remembers it. */
struct ctl_runrec {
	struct jobrt *rt;               /* only compared, never followed */
	uint64_t id;
	size_t ntasks, ndone, nfailed;
	struct timespec started;        /* CLOCK_REALTIME */
	double wall_s;
	char **results;                 /* result JSON per index; NULL: not yet */
	struct ctl_runrec *next;
};

/* Per job name: survives reloads. */
struct ctl_jobrec {
	char *name;
	struct ctl_runrec *running;
	struct ctl_runrec *last;        /* the last run that finished */
	json_t *last_control;           /* the last cancel or kill: who asked */
	struct ctl_jobrec *next;
};

static struct {
	int fd;
	char *path, *dir;
	bool dir_shared;                /* not ours to chmod (see the top) */
	struct loop_watch *watch;
	struct loop_timer *retry, *sweep, *reaper, *kicker;     /* made at start */
	bool reap_armed, kick_armed;
	int paused;                     /* consecutive EMFILE retries */
	struct ctl_client *clients, *dead;
	int nclients;
	unsigned long next_id;
	char *group;                    /* applied: NULL = the daemon's group */
	gid_t gid;
	bool readonly;
	double idle_timeout;
	struct timespec started;
	struct ctl_jobrec *jobs;
} ctl = { .fd = -1 };

static void ctl_flush(struct ctl_client *c);
static void ctl_process_input(struct ctl_client *c);
static void ctl_client_drop(struct ctl_client *c);

/* --- small helpers ---------------------------------------------------- */

/* A JSON string of S; bytes that are not UTF-8 become '?'. */
static json_t *
ctl_jstr(const char *s)
{
	json_t *j;
	char *copy;

	if (s == NULL)
		return json_null();
	if ((j = json_string(s)) != NULL)
		return j;
	copy = xstrdup(s);
	for (unsigned char *p = (unsigned char *)copy; *p; p++)
		if (*p >= 0x80)
			*p = '?';
	j = json_string(copy);
	free(copy);
	return j ? j : json_null();
}

static void
ctl_set(json_t *obj, const char *key, json_t *value)
{
	json_object_set_new(obj, key, value ? value : json_null());
}

static void
ctl_iso_time(char *buf, size_t len, double t)
{
	struct tm tm;
	time_t sec = (time_t)t;
	long ms = (long)((t - (double)sec) * 1000.0);

	gmtime_r(&sec, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
		 (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100, tm.tm_mday % 100,
		 tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100, ms % 1000);
}

static json_t *
ctl_jtime(double t)
{
	char buf[40];

	if (t < 0)
		return json_null();
	ctl_iso_time(buf, sizeof buf, t);
	return json_string(buf);
}

static double
ctl_now_real(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts_to_s(&ts);
}

static const char *
ctl_overlap_name(enum overlap_policy o)
{
	switch (o) {
	case OVERLAP_SKIP: return "skip";
	case OVERLAP_QUEUE: return "queue";
	case OVERLAP_REPLACE: return "replace";
	case OVERLAP_ALLOW: return "allow";
	}
	return "?";
}

static const char *
ctl_signame(int sig, char *buf, size_t len)
{
	const char *abbrev = sigabbrev_np(sig);

	if (abbrev)
		snprintf(buf, len, "SIG%s", abbrev);
	else
		snprintf(buf, len, "signal %d", sig);
	return buf;
}

/* --- what ctl.c remembers of runs ------------------------------------- */

static struct ctl_jobrec *
ctl_jobrec(const char *name, bool create)
{
	struct ctl_jobrec *jr;

	for (jr = ctl.jobs; jr; jr = jr->next)
		if (strcmp(jr->name, name) == 0)
			return jr;
	if (!create)
		return NULL;
	jr = xcalloc(1, sizeof *jr);
	jr->name = xstrdup(name);
	jr->next = ctl.jobs;
	ctl.jobs = jr;
	return jr;
}

static void
ctl_runrec_free(struct ctl_runrec *rr)
{
	if (rr == NULL)
		return;
	for (size_t i = 0; i < rr->ntasks; i++)
		free(rr->results[i]);
	free(rr->results);
	free(rr);
}

static struct ctl_runrec *
ctl_runrec_find(struct ctl_jobrec *jr, struct jobrt *rt, uint64_t id)
{
	for (struct ctl_runrec *rr = jr ? jr->running : NULL; rr; rr = rr->next)
		if (rr->rt == rt && rr->id == id)
			return rr;
	return NULL;
}

static void
ctl_rec_started(struct jobrt *rt, uint64_t id, size_t ntasks, void *arg)
{
	struct ctl_jobrec *jr = ctl_jobrec(jobrt_def(rt)->name, true);
	struct ctl_runrec *rr = xcalloc(1, sizeof *rr);

	(void)arg;
	rr->rt = rt;
	rr->id = id;
	rr->ntasks = ntasks;
	rr->results = xcalloc(ntasks ? ntasks : 1, sizeof *rr->results);
	clock_gettime(CLOCK_REALTIME, &rr->started);
	rr->next = jr->running;
	jr->running = rr;
}

/* R as the one-line JSON design.md shows, without its newline.  Caller
 * frees. */
static char *
ctl_result_text(const struct task_result *r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);

	if (fp == NULL)
		fatal("open_memstream");
	result_write_json(fp, r);
	if (fclose(fp) != 0)
		fatal("open_memstream");
	if (len > 0 && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	return buf;
}

static void
ctl_rec_task_done(struct jobrt *rt, const struct task_result *r, void *arg)
{
	struct ctl_runrec *rr = ctl_runrec_find(ctl_jobrec(r->job, false), rt, r->run);

	(void)arg;
	if (rr == NULL || r->index >= rr->ntasks || rr->results[r->index])
		return;
	rr->results[r->index] = ctl_result_text(r);
	rr->ndone++;
	if (r->status != TASK_OK)
		rr->nfailed++;
}

static void
ctl_rec_run_done(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
		 double wall_s, void *arg)
{
	struct ctl_jobrec *jr = ctl_jobrec(jobrt_def(rt)->name, false);
	struct ctl_runrec **pp, *rr;

	(void)arg;
	(void)ntasks;
	if (jr == NULL)
		return;
	for (pp = &jr->running; *pp; pp = &(*pp)->next)
		if ((*pp)->rt == rt && (*pp)->id == id)
			break;
	if ((rr = *pp) == NULL)
		return;
	*pp = rr->next;
	rr->next = NULL;
	rr->nfailed = nfailed;
	rr->wall_s = wall_s;
	ctl_runrec_free(jr->last);
	jr->last = rr;
}

static const struct run_observer ctl_recorder = {
	.run_started = ctl_rec_started,
	.task_done = ctl_rec_task_done,
	.run_done = ctl_rec_run_done,
};

static json_t *
ctl_run_json(const struct ctl_runrec *rr, bool finished, bool results)
{
	json_t *o = json_object();

	ctl_set(o, "run", json_integer((json_int_t)rr->id));
	ctl_set(o, "tasks", json_integer((json_int_t)rr->ntasks));
	ctl_set(o, "done", json_integer((json_int_t)(finished ? rr->ntasks : rr->ndone)));
	ctl_set(o, "failed", json_integer((json_int_t)rr->nfailed));
	ctl_set(o, "started", ctl_jtime(ts_to_s(&rr->started)));
	if (finished) {
		ctl_set(o, "status", json_string(rr->nfailed ? "failed" : "ok"));
		ctl_set(o, "wall_s", json_real(rr->wall_s));
	}
	if (results) {
		json_t *a = json_array();
		for (size_t i = 0; i < rr->ntasks; i++) {
			json_t *r;
			if (rr->results[i] == NULL)
				continue;
			if ((r = json_loads(rr->results[i], 0, NULL)) != NULL)
				json_array_append_new(a, r);
		}
		ctl_set(o, "results", a);
	}
	return o;
}

/* --- the socket: set-up ----------------------------------------------- */

/* The group's id: the daemon's own when NAME is NULL. */
static int
ctl_group_id(const char *name, gid_t *gid)
{
	struct group *gr;

	if (name == NULL) {
		*gid = getegid();
		return 0;
	}
	errno = 0;
	if ((gr = getgrnam(name)) == NULL) {
		if (errno == 0)
			errno = ENOENT;
		return -1;
	}
	*gid = gr->gr_gid;
	return 0;
}

/* Give the directory (unless shared) and the socket their group and
 * modes; -1 with a reason in ERR. */
static int
ctl_apply_modes(char *err, size_t errlen)
{
	mode_t dmode = ctl.readonly ? 0755 : 0750;
	mode_t smode = ctl.readonly ? 0666 : 0660;

	if (!ctl.dir_shared) {
		if (chown(ctl.dir, (uid_t)-1, ctl.gid) == -1 || chmod(ctl.dir, dmode) == -1) {
			snprintf(err, errlen, "control socket directory %s: %s", ctl.dir,
				 strerror(errno));
			return -1;
		}
	}
	if (chown(ctl.path, (uid_t)-1, ctl.gid) == -1 || chmod(ctl.path, smode) == -1) {
		snprintf(err, errlen, "control socket %s: %s", ctl.path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Does the directory hold anything but the socket? */
static bool
ctl_dir_has_others(void)
{
	const char *base = ctl.path + strlen(ctl.dir) + (strcmp(ctl.dir, "/") != 0);
	struct dirent *de;
	bool others = false;
	DIR *dp;

	if ((dp = opendir(ctl.dir)) == NULL)
		return true;
	while (!others && (de = readdir(dp)) != NULL)
		others = strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
			 strcmp(de->d_name, base) != 0;
	closedir(dp);
	return others;
}

/* The socket's directory: created when missing; see the top comment. */
static int
ctl_prepare_dir(char *err, size_t errlen)
{
	struct stat st;

	if (stat(ctl.dir, &st) == -1) {
		if (errno != ENOENT || mkdir(ctl.dir, 0700) == -1 ||
		    stat(ctl.dir, &st) == -1) {
			snprintf(err, errlen, "control socket directory %s: %s", ctl.dir,
				 strerror(errno));
			return -1;
		}
		log_info("control socket directory %s created", ctl.dir);
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "control socket directory %s: not a directory", ctl.dir);
		return -1;
	}
	if (st.st_mode & S_ISVTX) {
		ctl.dir_shared = true;
		log_info("control socket directory %s is shared (sticky): leaving its "
			 "mode; the socket's own mode and the peer check protect it", ctl.dir);
		return 0;
	}
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		snprintf(err, errlen, "control socket directory %s: owned by uid %ld, not "
			 "by jobrund's uid %ld or root: refusing it (its owner could replace "
			 "the socket)", ctl.dir, (long)st.st_uid, (long)geteuid());
		return -1;
	}
	if (ctl_dir_has_others()) {
		/* /run, a home directory...: not ours to close. */
		ctl.dir_shared = true;
		log_info("control socket directory %s holds other files: leaving its "
			 "mode; the socket's own mode and the peer check protect it", ctl.dir);
	}
	return 0;
}

static int
ctl_sockaddr(struct sockaddr_un *sun, const char *path, char *err, size_t errlen)
{
	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sun->sun_path) {
		snprintf(err, errlen, "control socket %s: path too long (at most %zu bytes)",
			 path, sizeof sun->sun_path - 1);
		return -1;
	}
	memcpy(sun->sun_path, path, strlen(path) + 1);
	return 0;
}

/* Is a jobrund listening at PATH?  Remove a stale socket.  0 when the
 * path is free, -1 with a reason in ERR. */
static int
ctl_claim_path(const struct sockaddr_un *sun, char *err, size_t errlen)
{
	struct stat st;
	int fd, rc;

	if (lstat(ctl.path, &st) == -1) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "control socket %s: %s", ctl.path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s: exists and is not a socket: "
			 "not replacing it", ctl.path);
		return -1;
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	rc = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
	close(fd);
	if (rc == 0) {
		snprintf(err, errlen, "control socket %s is in use: another jobrund is "
			 "running", ctl.path);
		return -1;
	}
	if (errno != ECONNREFUSED) {
		snprintf(err, errlen, "control socket %s: %s", ctl.path, strerror(errno));
		return -1;
	}
	if (unlink(ctl.path) == -1 && errno != ENOENT) {
		snprintf(err, errlen, "control socket %s: cannot remove the stale socket: %s",
			 ctl.path, strerror(errno));
		return -1;
	}
	log_msg(LOG_NOTICE, "control socket %s: removed a stale socket", ctl.path);
	return 0;
}

int
ctl_init(const struct jr_config *cfg)
{
	struct sockaddr_un sun;
	char err[1024];
	char *slash;
	mode_t old;
	int fd = -1;

	ctl.path = xstrdup(cfg->control_socket);
	ctl.dir = xstrdup(cfg->control_socket);
	slash = strrchr(ctl.dir, '/');
	if (slash == ctl.dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	ctl.readonly = cfg->control_readonly;
	ctl.group = cfg->control_group ? xstrdup(cfg->control_group) : NULL;
	if (ctl_group_id(ctl.group, &ctl.gid) == -1) {
		snprintf(err, sizeof err, "control_group '%s': %s", ctl.group,
			 errno == ENOENT ? "no such group" : strerror(errno));
		goto fail;
	}
	if (ctl_sockaddr(&sun, ctl.path, err, sizeof err) == -1 ||
	    ctl_prepare_dir(err, sizeof err) == -1 ||
	    ctl_claim_path(&sun, err, sizeof err) == -1)
		goto fail;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd == -1) {
		snprintf(err, sizeof err, "socket: %s", strerror(errno));
		goto fail;
	}
	/* Nobody but us until the group and mode are set. */
	old = umask(0177);
	if (bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		umask(old);
		snprintf(err, sizeof err, "control socket %s: bind: %s", ctl.path,
			 strerror(errno));
		goto fail;
	}
	umask(old);
	if (ctl_apply_modes(err, sizeof err) == -1) {
		unlink(ctl.path);
		goto fail;
	}
	if (listen(fd, SOMAXCONN) == -1) {
		snprintf(err, sizeof err, "control socket %s: listen: %s", ctl.path,
			 strerror(errno));
		unlink(ctl.path);
		goto fail;
	}
	ctl.fd = fd;
	log_info("control socket %s: group %s, %s", ctl.path,
		 ctl.group ? ctl.group : "jobrund's own",
		 ctl.readonly ? "read-only for every local user" : "for that group only");
	return 0;

fail:
	if (fd != -1)
		close(fd);
	log_msg(LOG_ERR, "%s", err);
	if (!log_get_stderr())
		fprintf(stderr, "jobrund: %s\n", err);
	free(ctl.path);
	free(ctl.dir);
	free(ctl.group);
	ctl.path = ctl.dir = ctl.group = NULL;
	return -1;
}

/* A reload may change control_group and control_readonly: apply them.
 * (control_socket takes a restart: said once.) */
static void
ctl_sync_config(void)
{
	const struct jr_config *cfg = daemon_config();
	static const struct jr_config *warned;
	char err[1024];
	gid_t gid;

	if (cfg == NULL)
		return;
	if (strcmp(cfg->control_socket, ctl.path) != 0 && warned != cfg) {
		warned = cfg;
		log_msg(LOG_NOTICE, "control_socket changed to %s: it takes effect at the "
			"next start (still serving %s)", cfg->control_socket, ctl.path);
	}
	if (cfg->control_readonly == ctl.readonly &&
	    ((cfg->control_group == NULL && ctl.group == NULL) ||
	     (cfg->control_group && ctl.group && strcmp(cfg->control_group, ctl.group) == 0)))
		return;
	if (ctl_group_id(cfg->control_group, &gid) == -1) {
		if (warned != cfg) {
			warned = cfg;
			log_msg(LOG_WARNING, "control_group '%s': %s: keeping the previous "
				"group", cfg->control_group,
				errno == ENOENT ? "no such group" : strerror(errno));
		}
		return;
	}
	free(ctl.group);
	ctl.group = cfg->control_group ? xstrdup(cfg->control_group) : NULL;
	ctl.gid = gid;
	ctl.readonly = cfg->control_readonly;
	if (ctl_apply_modes(err, sizeof err) == -1)
		log_msg(LOG_WARNING, "%s", err);
	else
		log_msg(LOG_NOTICE, "control socket %s: now group %s, %s", ctl.path,
			ctl.group ? ctl.group : "jobrund's own",
			ctl.readonly ? "read-only for every local user" : "for that group only");
}

/* --- peers ------------------------------------------------------------ */

/* Is GID among the groups of process PID, which must run as UID?  From
 * /proc/PID/status: its gids and supplementary groups, now. */
static bool
ctl_proc_in_group(pid_t pid, uid_t uid, gid_t gid)
{
	char path[64], line[4096];
	bool uid_ok = false, found = false;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	if ((fp = fopen(path, "re")) == NULL)
		return false;
	while (fgets(line, sizeof line, fp)) {
		if (strncmp(line, "Uid:", 4) == 0) {
			unsigned long r, e;
			/* The pid may have been reused since connect: its
			 * groups count only if it is still the peer's user. */
			if (sscanf(line + 4, "%lu %lu", &r, &e) == 2 &&
			    (uid_t)e == uid)
				uid_ok = true;
		} else if (strncmp(line, "Gid:", 4) == 0) {
			unsigned long r, e;
			if (sscanf(line + 4, "%lu %lu", &r, &e) == 2 && (gid_t)e == gid)
				found = true;
		} else if (strncmp(line, "Groups:", 7) == 0) {
			char *p = line + 7, *end;
			for (;;) {
				unsigned long g = strtoul(p, &end, 10);
				if (end == p)
					break;
				if ((gid_t)g == gid)
					found = true;
				p = end;
			}
		}
	}
	fclose(fp);
	return uid_ok && found;
}

static enum ctl_access
ctl_peer_access(int fd, struct ucred *uc)
{
	socklen_t len = sizeof *uc;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, uc, &len) == -1 ||
	    len != sizeof *uc) {
		uc->uid = (uid_t)-1;
		uc->gid = (gid_t)-1;
		uc->pid = 0;
		return CTL_NONE;
	}
	if (uc->uid == 0 || uc->uid == geteuid() || uc->gid == ctl.gid ||
	    ctl_proc_in_group(uc->pid, uc->uid, ctl.gid))
		return CTL_ALL;
	return ctl.readonly ? CTL_READ : CTL_NONE;
}

/* --- clients: output -------------------------------------------------- */

static void
ctl_update_events(struct ctl_client *c)
{
	uint32_t ev = 0;

	if (c->dead)
		return;
	/* Input is read while there is room for it (a client waiting for
	 * its run may send the next request meanwhile, not more). */
	if (c->draining || (!c->eof && !c->closing && c->inlen <= CTL_MAX_REQUEST))
		ev |= EPOLLIN;
	if (c->outoff < c->outlen)
		ev |= EPOLLOUT;
	if (ev != c->events) {
		c->events = ev;
		loop_modify(c->watch, ev);
	}
}

static void
ctl_flush(struct ctl_client *c)
{
	while (!c->dead && c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			c->outoff += (size_t)n;
			c->active = mono_now();
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		if (errno != EPIPE && errno != ECONNRESET)
			log_warn("control: client %lu: write", c->id);
		ctl_client_drop(c);
		return;
	}
	if (c->dead)
		return;
	if (c->outoff == c->outlen) {
		c->outoff = c->outlen = 0;
		if (c->eof && (c->closing || c->waiter == NULL)) {
			ctl_client_drop(c);
			return;
		}
		if (c->closing && !c->draining) {
			/* Closing with unread input would reset the connection,
			 * and the client might lose the reply: say we are done,
			 * and read what it still sends until it closes too. */
			c->draining = true;
			shutdown(c->fd, SHUT_WR);
		}
	}
	ctl_update_events(c);
}

/* Queue MSG (stolen) as one line, with "v" first, and send what we can. */
static void
ctl_send(struct ctl_client *c, json_t *msg)
{
	json_t *line = json_object();
	const char *key;
	json_t *value;
	char *text;
	size_t len;

	ctl_set(line, "v", json_integer(CTL_PROTO_VERSION));
	json_object_foreach(msg, key, value)
		json_object_set(line, key, value);
	json_decref(msg);
	if (c == NULL || c->dead) {
		json_decref(line);
		return;
	}
	text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(9));
	json_decref(line);
	if (text == NULL)
		fatal("json_dumps");
	len = strlen(text);
	if (c->outlen - c->outoff + len + 1 > CTL_MAX_OUTPUT) {
		log_msg(LOG_WARNING, "control: client %lu (uid %ld) does not read its "
			"replies (%zu bytes waiting): dropped", c->id, (long)c->uid,
			c->outlen - c->outoff);
		free(text);
		ctl_client_drop(c);
		return;
	}
	if (c->outoff > 0 && c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	c->out = xrealloc(c->out, c->outlen + len + 1);
	memcpy(c->out + c->outlen, text, len);
	c->out[c->outlen + len] = '\n';
	c->outlen += len + 1;
	free(text);
	ctl_flush(c);
}

static void
ctl_reply_ok(struct ctl_client *c, json_t *data)
{
	json_t *m = json_object();

	ctl_set(m, "type", json_string("reply"));
	ctl_set(m, "ok", json_true());
	ctl_set(m, "data", data ? data : json_object());
	ctl_send(c, m);
}

static void
ctl_reply_err(struct ctl_client *c, json_t *errors, const char *fmt, ...)
	JR_PRINTFLIKE(3, 4);

static void
ctl_reply_err(struct ctl_client *c, json_t *errors, const char *fmt, ...)
{
	json_t *m = json_object();
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) == -1)
		fatal("vasprintf");
	va_end(ap);
	ctl_set(m, "type", json_string("reply"));
	ctl_set(m, "ok", json_false());
	ctl_set(m, "error", ctl_jstr(msg));
	if (errors)
		ctl_set(m, "errors", errors);
	free(msg);
	ctl_send(c, m);
}

/* --- commands --------------------------------------------------------- */

/* The job named in REQ, from the current config; NULL after replying an
 * error. */
static struct job_def *
ctl_req_job(struct ctl_client *c, json_t *req)
{
	const char *name = json_string_value(json_object_get(req, "job"));
	const struct jr_config *cfg = daemon_config();
	struct job_def *def;

	if (name == NULL) {
		ctl_reply_err(c, NULL, "this command needs a job name (\"job\")");
		return NULL;
	}
	if (cfg == NULL || (def = cfg_find_job((struct jr_config *)(uintptr_t)cfg, name)) == NULL) {
		ctl_reply_err(c, NULL, "no such job '%s'", name);
		return NULL;
	}
	return def;
}

static const char *
ctl_job_state(const struct job_def *def, const struct ctl_jobrec *jr)
{
	if (jr && jr->running)
		return "running";
	if (!def->enabled)
		return "disabled";
	if (def->plugin == NULL)
		return "unavailable";
	if (daemon_find_job(def->name) == NULL)
		return "inactive";
	return "idle";
}

static json_t *
ctl_job_summary(const struct job_def *def, bool results)
{
	struct ctl_jobrec *jr = ctl_jobrec(def->name, false);
	json_t *o = json_object(), *running = json_array();
	double next = daemon_next_fire(def->name);

	ctl_set(o, "name", ctl_jstr(def->name));
	ctl_set(o, "plugin", ctl_jstr(def->plugin_name));
	ctl_set(o, "mode", json_string(mode_name(def->mode)));
	ctl_set(o, "workers", json_integer(def->workers));
	ctl_set(o, "schedule", ctl_jstr(def->schedule));
	ctl_set(o, "enabled", json_boolean(def->enabled));
	ctl_set(o, "state", json_string(ctl_job_state(def, jr)));
	ctl_set(o, "next_run", next >= 0 ? ctl_jtime(next) : json_null());
	for (struct ctl_runrec *rr = jr ? jr->running : NULL; rr; rr = rr->next)
		json_array_insert_new(running, 0, ctl_run_json(rr, false, false));
	ctl_set(o, "running", running);
	ctl_set(o, "last_run", jr && jr->last ? ctl_run_json(jr->last, true, results) :
		json_null());
	return o;
}

static void
ctl_cmd_status(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	const struct jr_config *cfg = daemon_config();
	json_t *data = json_object(), *daemon = json_object(), *jobs = json_array();
	struct timespec now;

	(void)req;
	(void)uc;
	clock_gettime(CLOCK_REALTIME, &now);
	ctl_set(daemon, "version", json_string(PACKAGE_VERSION));
	ctl_set(daemon, "pid", json_integer(getpid()));
	ctl_set(daemon, "config", ctl_jstr(cfg ? cfg->file : NULL));
	ctl_set(daemon, "started", ctl_jtime(ts_to_s(&ctl.started)));
	ctl_set(daemon, "uptime_s", json_real(ts_to_s(&now) - ts_to_s(&ctl.started)));
	ctl_set(data, "daemon", daemon);
	for (size_t i = 0; cfg && i < cfg->njobs; i++)
		json_array_append_new(jobs, ctl_job_summary(&cfg->jobs[i], false));
	ctl_set(data, "jobs", jobs);
	ctl_reply_ok(c, data);
}

static json_t *
ctl_strings(char *const *v, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, ctl_jstr(v[i]));
	return a;
}

static void
ctl_cmd_show(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	struct job_def *def = ctl_req_job(c, req);
	struct ctl_jobrec *jr;
	json_t *data, *d, *limits;

	(void)uc;
	if (def == NULL)
		return;
	data = ctl_job_summary(def, true);
	d = json_object();
	ctl_set(d, "file", ctl_jstr(def->file));
	ctl_set(d, "line", json_integer(def->line));
	ctl_set(d, "inputs", def->has_inputs ? ctl_strings(def->inputs, def->ninputs) :
		json_null());
	ctl_set(d, "timeout_s", json_real(def->timeout_s));
	ctl_set(d, "kill_grace_s", json_real(def->kill_grace_s));
	ctl_set(d, "overlap", json_string(ctl_overlap_name(def->overlap)));
	ctl_set(d, "retries", json_integer(def->retries));
	ctl_set(d, "prestart", json_boolean(def->prestart));
	ctl_set(d, "max_tasks_per_worker", json_integer(def->max_tasks_per_worker));
	ctl_set(d, "max_rss", json_integer((json_int_t)def->max_rss));
	limits = json_object();
	for (int i = 0; i < JR_RLIMITS; i++)
		if (def->rlimit[i] >= 0)
			ctl_set(limits, rlimit_names[i], json_integer(def->rlimit[i]));
	ctl_set(d, "rlimits", limits);
	ctl_set(d, "user", ctl_jstr(def->user));
	ctl_set(d, "group", ctl_jstr(def->group));
	ctl_set(d, "cwd", ctl_jstr(def->cwd));
	ctl_set(d, "output_limit", json_integer((json_int_t)def->output_limit));
	/* Settings and the environment may hold secrets: only for those
	 * who may act, not for every local user (control_readonly). */
	if (c->access == CTL_ALL) {
		ctl_set(d, "env", def->has_env ? ctl_strings(def->env, def->nenv) : json_null());
		ctl_set(d, "settings", ctl_jstr(def->settings_text));
	}
	ctl_set(data, "definition", d);
	jr = ctl_jobrec(def->name, false);
	ctl_set(data, "last_control", jr && jr->last_control ?
		json_incref(jr->last_control) : json_null());
	ctl_reply_ok(c, data);
}

static void
ctl_waiter_started(struct jobrt *rt, uint64_t id, size_t ntasks, void *arg)
{
	struct ctl_waiter *wt = arg;
	json_t *m;

	wt->run = id;
	if (wt->c == NULL)
		return;
	m = json_object();
	ctl_set(m, "type", json_string("started"));
	ctl_set(m, "job", ctl_jstr(jobrt_def(rt)->name));
	ctl_set(m, "run", json_integer((json_int_t)id));
	ctl_set(m, "tasks", json_integer((json_int_t)ntasks));
	ctl_send(wt->c, m);
}

static void
ctl_waiter_task_done(struct jobrt *rt, const struct task_result *r, void *arg)
{
	struct ctl_waiter *wt = arg;
	json_t *m, *res;
	char *text;

	(void)rt;
	if (wt->c == NULL)
		return;
	text = ctl_result_text(r);
	res = json_loads(text, 0, NULL);
	free(text);
	m = json_object();
	ctl_set(m, "type", json_string("result"));
	ctl_set(m, "result", res);
	ctl_send(wt->c, m);
}

/* C's request that waited is answered: its next one, if one came
 * meanwhile, is handled from the loop, not from inside run.c's or the
 * reload's callback that called us. */
static void
ctl_waiter_finish(struct ctl_client *c)
{
	if (c->dead)
		return;
	c->active = mono_now();
	c->kick = true;
	if (!ctl.kick_armed) {
		ctl.kick_armed = true;
		loop_timer_set(ctl.kicker, 0, 0);
	}
	ctl_flush(c);
}

static void
ctl_waiter_run_done(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
		    double wall_s, void *arg)
{
	struct ctl_waiter *wt = arg;
	struct ctl_client *c = wt->c;
	json_t *data;

	free(wt);
	if (c == NULL)
		return;
	c->waiter = NULL;
	if (rt == NULL) {
		/* A run waiting for its predecessor (replace) never started. */
		ctl_reply_err(c, NULL, "the run did not start: jobrund is stopping or "
			      "the job went away");
		ctl_waiter_finish(c);
		return;
	}
	data = json_object();
	ctl_set(data, "job", ctl_jstr(jobrt_def(rt)->name));
	ctl_set(data, "run", json_integer((json_int_t)id));
	ctl_set(data, "tasks", json_integer((json_int_t)ntasks));
	ctl_set(data, "failed", json_integer((json_int_t)nfailed));
	ctl_set(data, "wall_s", json_real(wall_s));
	ctl_reply_ok(c, data);
	ctl_waiter_finish(c);
}

static void
ctl_cmd_run(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	struct job_def *def = ctl_req_job(c, req);
	bool wait = json_is_true(json_object_get(req, "wait"));
	struct run_observer obs = { 0 };
	struct ctl_waiter *wt = NULL;
	char err[512];
	uint64_t id;
	json_t *data;
	size_t ntasks;

	if (def == NULL)
		return;
	if (!def->enabled) {
		ctl_reply_err(c, NULL, "job %s is disabled", def->name);
		return;
	}
	if (def->plugin == NULL || daemon_find_job(def->name) == NULL) {
		ctl_reply_err(c, NULL, "job %s is not active: its plugin did not load "
			      "(see the log)", def->name);
		return;
	}
	ntasks = def->has_inputs ? def->ninputs : 1;
	if (wait) {
		wt = xcalloc(1, sizeof *wt);
		wt->c = c;
		c->waiter = wt;
		obs.run_started = ctl_waiter_started;
		obs.task_done = ctl_waiter_task_done;
		obs.run_done = ctl_waiter_run_done;
		obs.arg = wt;
	}
	if (daemon_run_job(def->name, wait ? &obs : NULL, &id, err, sizeof err) == -1) {
		if (wt) {
			c->waiter = NULL;
			free(wt);
		}
		log_msg(LOG_NOTICE, "control: run of job %s asked by uid %ld (pid %ld) "
			"refused: %s", def->name, (long)uc->uid, (long)uc->pid, err);
		ctl_reply_err(c, NULL, "%s", err);
		return;
	}
	log_msg(LOG_NOTICE, "job %s: run %" PRIu64 " started by uid %ld (pid %ld) through "
		"the control socket%s", def->name, id, (long)uc->uid, (long)uc->pid,
		wait ? ", which waits for it" : "");
	if (wait)
		return;         /* the waiter replies when the run ends */
	data = json_object();
	ctl_set(data, "job", ctl_jstr(def->name));
	ctl_set(data, "run", json_integer((json_int_t)id));
	ctl_set(data, "tasks", json_integer((json_int_t)ntasks));
	ctl_reply_ok(c, data);
}

static void
ctl_note_control(const char *job, const char *action, const char *signame,
		 const struct ucred *uc)
{
	struct ctl_jobrec *jr = ctl_jobrec(job, true);
	json_t *o = json_object();

	ctl_set(o, "action", json_string(action));
	if (signame)
		ctl_set(o, "signal", json_string(signame));
	ctl_set(o, "uid", json_integer((json_int_t)uc->uid));
	ctl_set(o, "pid", json_integer((json_int_t)uc->pid));
	ctl_set(o, "time", ctl_jtime(ctl_now_real()));
	json_decref(jr->last_control);
	jr->last_control = o;
}

/* Cancel the active runs of DEF's job (its older definitions' too) and
 * a queued one; the counts go into DATA. */
static void
ctl_cancel_runs(const struct job_def *def, json_t *data)
{
	struct ctl_jobrec *jr = ctl_jobrec(def->name, false);
	size_t ntasks = 0;
	int nruns;

	for (struct ctl_runrec *rr = jr ? jr->running : NULL; rr; rr = rr->next)
		ntasks += rr->ntasks - rr->ndone;
	nruns = daemon_cancel_job(def->name);
	if (nruns <= 0)
		ntasks = 0;
	ctl_set(data, "runs", json_integer(nruns > 0 ? nruns : 0));
	ctl_set(data, "tasks", json_integer((json_int_t)ntasks));
}

static void
ctl_cmd_cancel(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	struct job_def *def = ctl_req_job(c, req);
	json_t *data;

	if (def == NULL)
		return;
	data = json_object();
	ctl_set(data, "job", ctl_jstr(def->name));
	ctl_note_control(def->name, "cancel", NULL, uc);
	log_msg(LOG_NOTICE, "job %s: cancel requested by uid %ld (pid %ld) through the "
		"control socket", def->name, (long)uc->uid, (long)uc->pid);
	ctl_cancel_runs(def, data);
	ctl_reply_ok(c, data);
}

static void
ctl_collect_pid(pid_t pid, void *arg)
{
	json_array_append_new(arg, json_integer(pid));
}

static void
ctl_cmd_kill(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	struct job_def *def = ctl_req_job(c, req);
	json_t *jsig = json_object_get(req, "signal");
	struct sup_pool *sp;
	struct jobrt *rt;
	json_t *data, *pids;
	char signame[32];
	int sig = SIGTERM;

	if (def == NULL)
		return;
	if (jsig && !json_is_null(jsig)) {
		if (!json_is_integer(jsig) || json_integer_value(jsig) < 1 ||
		    json_integer_value(jsig) >= NSIG) {
			ctl_reply_err(c, NULL, "\"signal\": not a signal number (1 to %d)",
				      NSIG - 1);
			return;
		}
		sig = (int)json_integer_value(jsig);
	}
	ctl_signame(sig, signame, sizeof signame);
	data = json_object();
	ctl_set(data, "job", ctl_jstr(def->name));
	ctl_set(data, "mode", json_string(mode_name(def->mode)));
	ctl_set(data, "signal", json_string(signame));
	ctl_note_control(def->name, "kill", signame, uc);
	if (def->mode == MODE_THREAD) {
		/* Threads cannot be killed: kill means cancel. */
		log_msg(LOG_NOTICE, "job %s: kill (%s) requested by uid %ld (pid %ld) through "
			"the control socket: thread mode, cancelling its runs", def->name,
			signame, (long)uc->uid, (long)uc->pid);
		ctl_cancel_runs(def, data);
		ctl_reply_ok(c, data);
		return;
	}
	pids = json_array();
	rt = daemon_find_job(def->name);
	sp = rt ? jobrt_sup(rt) : NULL;
	if (sp)
		sup_kill(sp, sig, ctl_collect_pid, pids);
	log_msg(LOG_NOTICE, "job %s: %s sent to %zu worker%s requested by uid %ld "
		"(pid %ld) through the control socket", def->name, signame,
		json_array_size(pids), json_array_size(pids) == 1 ? "" : "s",
		(long)uc->uid, (long)uc->pid);
	ctl_set(data, "workers", json_integer((json_int_t)json_array_size(pids)));
	ctl_set(data, "pids", pids);
	ctl_reply_ok(c, data);
}

/* CPU seconds (user + system) and resident bytes of PATH (a
 * /proc/.../stat); -1 each when unknown. */
static void
ctl_proc_stat(const char *path, double *cpu_s, int64_t *rss)
{
	char buf[1024], *p;
	unsigned long long utime, stime;
	long long pages;
	FILE *fp;
	size_t n;

	*cpu_s = -1;
	*rss = -1;
	if ((fp = fopen(path, "re")) == NULL)
		return;
	n = fread(buf, 1, sizeof buf - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: skip to the
	 * last ')'; then field 3 (state) onwards. */
	if ((p = strrchr(buf, ')')) == NULL)
		return;
	if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
		   "%*d %*d %*d %*d %*d %*d %*u %*u %lld", &utime, &stime, &pages) != 3)
		return;
	*cpu_s = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
	*rss = pages * (int64_t)sysconf(_SC_PAGESIZE);
}

struct ctl_wctx {
	const struct job_def *def;
	json_t *rows;
};

static void
ctl_worker_row(const struct sup_worker_info *wi, void *arg)
{
	struct ctl_wctx *wc = arg;
	json_t *o = json_object();
	char path[64];
	double cpu;
	int64_t rss;

	snprintf(path, sizeof path, "/proc/%ld/stat", (long)wi->pid);
	ctl_proc_stat(path, &cpu, &rss);
	ctl_set(o, "job", ctl_jstr(wc->def->name));
	ctl_set(o, "mode", json_string("process"));
	ctl_set(o, "pid", json_integer(wi->pid));
	ctl_set(o, "tid", json_null());
	ctl_set(o, "state", json_string(wi->stopping ? "stopping" : wi->state));
	ctl_set(o, "run", wi->busy ? json_integer((json_int_t)wi->run) : json_null());
	ctl_set(o, "task", wi->busy ? json_integer((json_int_t)wi->index) : json_null());
	ctl_set(o, "tasks_done", json_integer(wi->tasks_done));
	ctl_set(o, "rss_bytes", rss >= 0 ? json_integer(rss) : json_null());
	ctl_set(o, "cpu_s", cpu >= 0 ? json_real(cpu) : json_null());
	json_array_append_new(wc->rows, o);
}

static void
ctl_thread_row(const struct tpool_thread_info *ti, void *arg)
{
	struct ctl_wctx *wc = arg;
	json_t *o = json_object();
	char path[64];
	double cpu = -1;
	int64_t rss;

	if (ti->tid > 0) {
		snprintf(path, sizeof path, "/proc/self/task/%ld/stat", (long)ti->tid);
		ctl_proc_stat(path, &cpu, &rss);
	}
	ctl_set(o, "job", ctl_jstr(wc->def->name));
	ctl_set(o, "mode", json_string("thread"));
	ctl_set(o, "pid", json_integer(getpid()));
	ctl_set(o, "tid", ti->tid > 0 ? json_integer(ti->tid) : json_null());
	ctl_set(o, "state", json_string(ti->busy ? "busy" : "idle"));
	ctl_set(o, "run", ti->busy ? json_integer((json_int_t)ti->run) : json_null());
	ctl_set(o, "task", ti->busy ? json_integer((json_int_t)ti->index) : json_null());
	ctl_set(o, "tasks_done", json_integer((json_int_t)ti->done));
	/* Threads share the daemon's memory: no RSS of their own. */
	ctl_set(o, "rss_bytes", json_null());
	ctl_set(o, "cpu_s", cpu >= 0 ? json_real(cpu) : json_null());
	json_array_append_new(wc->rows, o);
}

static void
ctl_cmd_workers(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	const struct jr_config *cfg = daemon_config();
	const struct job_def *only = NULL;
	struct ctl_wctx wc;
	json_t *data;

	(void)uc;
	if (json_object_get(req, "job") && !json_is_null(json_object_get(req, "job")) &&
	    (only = ctl_req_job(c, req)) == NULL)
		return;
	wc.rows = json_array();
	for (size_t i = 0; cfg && i < cfg->njobs; i++) {
		struct jobrt *rt;

		wc.def = &cfg->jobs[i];
		if ((only && only != wc.def) || (rt = daemon_find_job(wc.def->name)) == NULL)
			continue;
		if (jobrt_sup(rt))
			sup_foreach_worker(jobrt_sup(rt), ctl_worker_row, &wc);
		else if (jobrt_tpool(rt))
			tpool_foreach_thread(jobrt_tpool(rt), ctl_thread_row, &wc);
	}
	data = json_object();
	ctl_set(data, "workers", wc.rows);
	ctl_reply_ok(c, data);
}

static void
ctl_history_row(const struct history_run *hr, void *arg)
{
	json_t *o = json_object();

	ctl_set(o, "run", json_integer((json_int_t)hr->run));
	ctl_set(o, "trigger", ctl_jstr(hr->trigger));
	ctl_set(o, "status", json_string(run_status_name(hr->status)));
	ctl_set(o, "started", ctl_jtime(hr->started));
	ctl_set(o, "ended", hr->ended > 0 ? ctl_jtime(hr->ended) : json_null());
	ctl_set(o, "wall_s", hr->ended > 0 ? json_real(hr->ended - hr->started) :
		json_null());
	ctl_set(o, "tasks", json_integer((json_int_t)hr->ntasks));
	ctl_set(o, "ok", json_integer((json_int_t)hr->nok));
	ctl_set(o, "failed", json_integer((json_int_t)hr->nfailed));
	json_array_append_new(arg, o);
}

static void
ctl_cmd_history(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	const char *name = json_string_value(json_object_get(req, "job"));
	const struct jr_config *cfg = daemon_config();
	json_t *jn = json_object_get(req, "n"), *data, *runs;
	json_int_t n = CTL_HISTORY_DEFAULT;
	int rc;

	(void)uc;
	if (name == NULL) {
		ctl_reply_err(c, NULL, "this command needs a job name (\"job\")");
		return;
	}
	if (jn && !json_is_null(jn)) {
		if (!json_is_integer(jn) || json_integer_value(jn) < 1 ||
		    json_integer_value(jn) > INT_MAX) {
			ctl_reply_err(c, NULL, "\"n\": not a positive number of runs");
			return;
		}
		n = json_integer_value(jn);
	}
	runs = json_array();
	rc = history_list(name, (int)n, ctl_history_row, runs);
	/* Its pages stay in SQLite's cache, up to 512 KiB, unless given back. */
	daemon_idle_soon();
	if (rc == -1) {
		json_decref(runs);
		ctl_reply_err(c, NULL, "%s", errno == ENODEV ? "no run history: its database "
			      "could not be opened (see the log)" : "history: database error "
			      "(see the log)");
		return;
	}
	/* A job removed from the config keeps its history. */
	if (rc == 0 && (cfg == NULL ||
			cfg_find_job((struct jr_config *)(uintptr_t)cfg, name) == NULL)) {
		json_decref(runs);
		ctl_reply_err(c, NULL, "no such job '%s'", name);
		return;
	}
	data = json_object();
	ctl_set(data, "job", ctl_jstr(name));
	ctl_set(data, "runs", runs);
	ctl_reply_ok(c, data);
}

static void
ctl_reload_done(bool ok, const struct errlist *errs, void *arg)
{
	struct ctl_waiter *wt = arg;
	struct ctl_client *c = wt->c;
	const struct jr_config *cfg = daemon_config();
	json_t *data, *list;

	free(wt);
	if (c == NULL)
		return;
	c->waiter = NULL;
	if (ok) {
		ctl_sync_config();
		data = json_object();
		ctl_set(data, "config", ctl_jstr(cfg ? cfg->file : NULL));
		ctl_set(data, "jobs", json_integer(cfg ? (json_int_t)cfg->njobs : 0));
		ctl_reply_ok(c, data);
	} else if (errs == NULL) {
		ctl_reply_err(c, NULL, "jobrund is stopping: no reload");
	} else {
		list = json_array();
		for (size_t i = 0; i < errs->n; i++)
			json_array_append_new(list, ctl_jstr(errs->msgs[i]));
		ctl_reply_err(c, list, "reload of %s failed (%zu error%s): the running "
			      "configuration is unchanged", cfg ? cfg->file : "?", errs->n,
			      errs->n == 1 ? "" : "s");
	}
	ctl_waiter_finish(c);
}

static void
ctl_cmd_reload(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	struct ctl_waiter *wt = xcalloc(1, sizeof *wt);

	(void)req;
	log_msg(LOG_NOTICE, "control: reload requested by uid %ld (pid %ld)",
		(long)uc->uid, (long)uc->pid);
	/* The file is read off the loop; the reply comes when it is done. */
	wt->c = c;
	c->waiter = wt;
	daemon_reload_async(ctl_reload_done, wt);
}

static void
ctl_cmd_version(struct ctl_client *c, json_t *req, const struct ucred *uc)
{
	json_t *data = json_object();
	char abi[32];

	(void)req;
	(void)uc;
	snprintf(abi, sizeof abi, "%d.%d", JR_ABI_MAJOR, JR_ABI_MINOR);
	ctl_set(data, "version", json_string(PACKAGE_VERSION));
	ctl_set(data, "pid", json_integer(getpid()));
	ctl_set(data, "protocol", json_integer(CTL_PROTO_VERSION));
	ctl_set(data, "worker_protocol", json_integer(PROTO_VERSION));
	ctl_set(data, "plugin_abi", json_string(abi));
	ctl_reply_ok(c, data);
}

static const struct ctl_cmd {
	const char *name;
	bool acts;                      /* changes something: full access only */
	void (*fn)(struct ctl_client *c, json_t *req, const struct ucred *uc);
} ctl_cmds[] = {
	{ "status", false, ctl_cmd_status },
	{ "show", false, ctl_cmd_show },
	{ "workers", false, ctl_cmd_workers },
	{ "history", false, ctl_cmd_history },
	{ "version", false, ctl_cmd_version },
	{ "run", true, ctl_cmd_run },
	{ "cancel", true, ctl_cmd_cancel },
	{ "kill", true, ctl_cmd_kill },
	{ "reload", true, ctl_cmd_reload },
};

/* One request line (without its '\n'). */
static void
ctl_handle(struct ctl_client *c, const char *line, size_t len)
{
	const struct ctl_cmd *cmd = NULL;
	enum ctl_access access;
	struct ucred uc;
	const char *name;
	char err[512];
	json_t *req;
	int rc;

	c->active = mono_now();
	rc = ctlproto_parse(line, len, &req, &name, err, sizeof err);
	if (rc != 0) {
		if (rc == CTLPROTO_MALFORMED)
			log_msg(LOG_NOTICE, "control: client %lu (uid %ld): malformed "
				"request", c->id, (long)c->uid);
		ctl_reply_err(c, NULL, "%s", err);
		return;
	}
	for (size_t i = 0; i < sizeof ctl_cmds / sizeof ctl_cmds[0]; i++)
		if (strcmp(name, ctl_cmds[i].name) == 0)
			cmd = &ctl_cmds[i];
	if (cmd == NULL) {
		ctl_reply_err(c, NULL, "unknown command '%s'", name);
		json_decref(req);
		return;
	}
	/* The peer's credentials, for every request. */
	ctl_sync_config();
	access = ctl_peer_access(c->fd, &uc);
	if (access == CTL_NONE || (cmd->acts && access != CTL_ALL)) {
		log_msg(LOG_WARNING, "control: refused '%s' from uid %ld (pid %ld): not "
			"root or in control_group%s", cmd->name, (long)uc.uid, (long)uc.pid,
			access == CTL_READ ? " (control_readonly allows reading only)" : "");
		ctl_reply_err(c, NULL, "permission denied: '%s' needs root or membership "
			      "of group %s%s", cmd->name, ctl.group ? ctl.group : "(jobrund's own)",
			      access == CTL_READ ? " (control_readonly allows status, show, "
			      "workers and history only)" : "");
		json_decref(req);
		return;
	}
	c->access = access;
	cmd->fn(c, req, &uc);
	json_decref(req);
}

/* Handle complete request lines, one at a time, never during a run that
 * the client waits for. */
static void
ctl_process_input(struct ctl_client *c)
{
	c->dispatching = true;
	while (!c->dead && c->waiter == NULL && !c->closing) {
		size_t len, used;
		int rc = ctlproto_next_line(c->in, c->inlen, &len, &used);

		if (rc == 0)
			break;
		if (rc == -1) {
			log_msg(LOG_WARNING, "control: client %lu (uid %ld): request "
				"longer than %d bytes: closing", c->id, (long)c->uid,
				CTL_MAX_REQUEST);
			ctl_reply_err(c, NULL, "request too large (more than %d bytes)",
				      CTL_MAX_REQUEST);
			c->inlen = 0;
			c->closing = true;
			break;
		}
		if (!ctlproto_blank(c->in, len))
			ctl_handle(c, c->in, len);
		if (c->dead)
			break;
		c->inlen -= used;
		memmove(c->in, c->in + used, c->inlen);
	}
	c->dispatching = false;
	if (!c->dead)
		ctl_flush(c);
}

static void
ctl_read(struct ctl_client *c)
{
	size_t total = 0;

	while (c->draining && total < CTL_READ_BATCH) {
		char sink[4096];
		ssize_t n = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);

		if (n > 0) {
			total += (size_t)n;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			return;
		ctl_client_drop(c);     /* EOF: it has read our reply */
		return;
	}
	if (c->draining)
		return;
	while (!c->dead && !c->eof && total < CTL_READ_BATCH) {
		ssize_t n;

		/* Room for a whole request plus its newline, no more. */
		if (c->inlen > CTL_MAX_REQUEST)
			break;
		if (c->incap - c->inlen < 4096) {
			c->incap = c->incap ? c->incap * 2 : 4096;
			if (c->incap > CTL_MAX_REQUEST + 4096)
				c->incap = CTL_MAX_REQUEST + 4096;
			c->in = xrealloc(c->in, c->incap);
		}
		n = recv(c->fd, c->in + c->inlen, c->incap - c->inlen - 1, MSG_DONTWAIT);
		if (n > 0) {
			c->inlen += (size_t)n;
			total += (size_t)n;
			continue;
		}
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			break;
		if (n == -1 && errno != ECONNRESET)
			log_warn("control: client %lu: read", c->id);
		c->eof = true;
	}
	if (c->dead)
		return;
	ctl_process_input(c);
	if (c->dead)
		return;
	/* Gone (or done sending) with nothing left to say to it. */
	if (c->eof && c->waiter == NULL && c->outoff == c->outlen)
		ctl_client_drop(c);
	else
		ctl_update_events(c);
}

static void
ctl_client_event(int fd, uint32_t events, void *arg)
{
	struct ctl_client *c = arg;

	(void)fd;
	if (events & EPOLLOUT)
		ctl_flush(c);
	if (!c->dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		ctl_read(c);
}

/* --- clients: life and death ------------------------------------------ */

/* Requests that came while an earlier one waited. */
static void
ctl_kick(void *arg)
{
	(void)arg;
	ctl.kick_armed = false;
	/* A request may end other clients' waits, and drop them: start
	 * over after each rather than trust a saved next pointer. */
	for (bool again = true; again; ) {
		again = false;
		for (struct ctl_client *c = ctl.clients; c; c = c->next) {
			if (c->kick && !c->dispatching) {
				c->kick = false;
				ctl_process_input(c);
				again = true;
				break;
			}
		}
	}
}

static void
ctl_reap(void *arg)
{
	(void)arg;
	ctl.reap_armed = false;
	while (ctl.dead) {
		struct ctl_client *c = ctl.dead;
		ctl.dead = c->next;
		free(c->in);
		free(c->out);
		free(c);
	}
}

/* Close C now; its memory goes later, as callers up the stack may still
 * hold it. */
static void
ctl_client_drop(struct ctl_client *c)
{
	if (c->dead)
		return;
	c->dead = true;
	loop_remove(c->watch);
	close(c->fd);
	if (c->waiter)
		c->waiter->c = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		ctl.clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = ctl.dead;
	ctl.dead = c;
	ctl.nclients--;
	log_debug("control: client %lu (uid %ld) gone", c->id, (long)c->uid);
	if (!ctl.reap_armed) {
		ctl.reap_armed = true;
		loop_timer_set(ctl.reaper, 0, 0);
	}
	if (ctl.nclients == 0)
		loop_timer_set(ctl.sweep, -1, 0);
}

/* Drop clients that said nothing, or read nothing, for too long. */
static void
ctl_sweep(void *arg)
{
	double now = mono_now();

	(void)arg;
	for (struct ctl_client *c = ctl.clients, *next; c; c = next) {
		next = c->next;
		if (now - c->active < ctl.idle_timeout)
			continue;
		if (c->outoff < c->outlen) {
			log_msg(LOG_NOTICE, "control: client %lu (uid %ld) read nothing for "
				"%gs: dropped", c->id, (long)c->uid, ctl.idle_timeout);
			ctl_client_drop(c);
		} else if (c->waiter == NULL) {
			log_msg(LOG_INFO, "control: client %lu (uid %ld) sent no request for "
				"%gs: dropped", c->id, (long)c->uid, ctl.idle_timeout);
			ctl_client_drop(c);
		}
	}
}

static void
ctl_client_new(int fd)
{
	struct ctl_client *c = xcalloc(1, sizeof *c);
	struct ucred uc;
	socklen_t len = sizeof uc;

	c->fd = fd;
	c->id = ++ctl.next_id;
	c->uid = (uid_t)-1;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
		c->uid = uc.uid;
		c->pid = uc.pid;
	}
	c->active = mono_now();
	c->events = EPOLLIN;
	c->watch = loop_add(fd, EPOLLIN, ctl_client_event, c);
	c->next = ctl.clients;
	if (ctl.clients)
		ctl.clients->prev = c;
	ctl.clients = c;
	if (ctl.nclients++ == 0) {
		double every = ctl.idle_timeout / 4 < 1.0 ? ctl.idle_timeout / 4 : 1.0;
		loop_timer_set(ctl.sweep, every, every);
	}
	log_debug("control: client %lu connected (uid %ld, pid %ld)", c->id,
		  (long)c->uid, (long)c->pid);
}

static void ctl_accept(int fd, uint32_t events, void *arg);

/* At most half the descriptors go to clients: the rest are the jobs'. */
static int
ctl_max_clients(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur / 2 >= CTL_MAX_CLIENTS)
		return CTL_MAX_CLIENTS;
	return rl.rlim_cur / 2 > 0 ? (int)(rl.rlim_cur / 2) : 1;
}

static void
ctl_resume_accept(void *arg)
{
	(void)arg;
	ctl.watch = loop_add(ctl.fd, EPOLLIN, ctl_accept, NULL);
}

/* Out of descriptors (or memory): the listening socket stays readable,
 * so stop watching it for a while instead of spinning.  The timer exists
 * already: making one would need a descriptor. */
static void
ctl_pause_accept(int err)
{
	if (ctl.paused++ == 0)
		log_msg(LOG_WARNING, "control socket: accept: %s: not accepting "
			"connections for %gs", strerror(err), CTL_RETRY_ACCEPT);
	else
		log_debug("control socket: accept: %s: still not accepting (retry %d)",
			  strerror(err), ctl.paused);
	loop_remove(ctl.watch);
	ctl.watch = NULL;
	loop_timer_set(ctl.retry, CTL_RETRY_ACCEPT, 0);
}

static void
ctl_accept(int fd, uint32_t events, void *arg)
{
	(void)events;
	(void)arg;
	for (int i = 0; i < CTL_ACCEPT_BATCH; i++) {
		int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (cfd == -1) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			ctl_pause_accept(errno);
			return;
		}
		if (ctl.paused) {
			log_msg(LOG_NOTICE, "control socket: accepting connections again");
			ctl.paused = 0;
		}
		if (ctl.nclients >= ctl_max_clients()) {
			static const char busy[] = "{\"v\":1,\"type\":\"reply\",\"ok\":false,"
				"\"error\":\"too many connections: try again\"}\n";
			(void)!send(cfd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(cfd);
			continue;
		}
		ctl_client_new(cfd);
	}
}

void
ctl_start(void)
{
	const char *env = getenv("JOBRUND_CTL_IDLE_TIMEOUT");
	char *end;

	if (ctl.fd == -1)
		return;
	/* The idle timeout can be shortened for tests. */
	ctl.idle_timeout = CTL_IDLE_TIMEOUT;
	if (env && *env) {
		double v = strtod(env, &end);
		if (*end == '\0' && v > 0 && v <= 3600)
			ctl.idle_timeout = v;
	}
	clock_gettime(CLOCK_REALTIME, &ctl.started);
	run_observe(&ctl_recorder);
	ctl.retry = loop_timer_new(ctl_resume_accept, NULL);
	ctl.sweep = loop_timer_new(ctl_sweep, NULL);
	ctl.reaper = loop_timer_new(ctl_reap, NULL);
	ctl.kicker = loop_timer_new(ctl_kick, NULL);
	ctl.watch = loop_add(ctl.fd, EPOLLIN, ctl_accept, NULL);
}

void
ctl_shutdown(void)
{
	if (ctl.fd == -1)
		return;
	run_unobserve(&ctl_recorder);
	while (ctl.clients) {
		struct ctl_client *c = ctl.clients;
		/* A last chance for replies already queued. */
		if (c->outoff < c->outlen)
			(void)!send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				    MSG_NOSIGNAL | MSG_DONTWAIT);
		ctl_client_drop(c);
	}
	ctl_reap(NULL);
	loop_timer_remove(ctl.retry);
	loop_timer_remove(ctl.sweep);
	loop_timer_remove(ctl.reaper);
	loop_timer_remove(ctl.kicker);
	loop_remove(ctl.watch);
	ctl.retry = ctl.sweep = ctl.reaper = ctl.kicker = NULL;
	ctl.watch = NULL;
	close(ctl.fd);
	ctl.fd = -1;
	if (unlink(ctl.path) == -1 && errno != ENOENT)
		log_warn("control socket %s: unlink", ctl.path);
	while (ctl.jobs) {
		struct ctl_jobrec *jr = ctl.jobs;
		ctl.jobs = jr->next;
		while (jr->running) {
			struct ctl_runrec *rr = jr->running;
			jr->running = rr->next;
			ctl_runrec_free(rr);
		}
		ctl_runrec_free(jr->last);
		json_decref(jr->last_control);
		free(jr->name);
		free(jr);
	}
	free(ctl.path);
	free(ctl.dir);
	free(ctl.group);
	ctl.path = ctl.dir = ctl.group = NULL;
}
