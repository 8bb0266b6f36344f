/*
 * loader.c - opening plugins safely and checking their ABI before any of
 * their code is called; and plugin sets, which load each plugin of a
 * config once.
 *
 * A plugin runs with the daemon's privileges, so the loader only opens
 * PLUGIN_DIR/NAME.so, with NAME made of [A-Za-z0-9_.-] and not starting
 * with '.', and refuses it unless the directory and the file are owned by
 * root or by jobrund's own user and are not writable by group or others
 * (the OpenSMTPD rule: what others can write, others control).  The file
 * must be a regular file itself: symbolic links, FIFOs and directories are
 * refused.
 *
 * No check/use race: the directory is opened once and everything below is
 * looked up relative to that descriptor; the file is lstat'ed (so a FIFO is
 * never opened), opened with O_NOFOLLOW, fstat'ed and compared with the
 * lstat (same device and inode), and then the checked descriptor itself is
 * loaded, through "/proc/self/fd/N", so what dlopen maps is the inode we
 * checked, whatever happens to the path meanwhile.
 *
 * That name needs care: glibc's dlopen first looks for an already loaded
 * object whose *name* matches and returns it without opening anything.  If
 * descriptor N were closed and reused for another plugin while an object
 * named "/proc/self/fd/N" is still loaded, dlopen would hand back the old
 * plugin.  So each loaded file keeps its descriptor open while it may be
 * mapped (struct loaded_file, shared by every struct plugin of that file;
 * after the last dlclose we ask the linker whether the object really went
 * away, and keep the descriptor forever if it did not, e.g. for a
 * NODELETE object).  Without /proc (a bare chroot) the loader falls back
 * to dlopen(PATH) and checks afterwards that PATH is still the inode it
 * checked; the window left there is only open to whoever may write the
 * directory, which we just verified is root or us.
 *
 * dlopen runs the object's ELF constructors: that cannot be avoided short
 * of parsing ELF ourselves, and plugin.h asks plugins not to have any.
 * Everything else waits for the descriptor check: the symbol's ELF size,
 * the ABI major, minor and descriptor size, then run and name.
 */
#include "config.h"

#include <sys/stat.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund.h"

/* The smallest descriptor each ABI minor version defines, indexed by
 * minor: a plugin built for 1.N must carry at least descriptor_size[N]
 * bytes.  Add a line here when JR_ABI_MINOR is bumped. */
static const size_t descriptor_size[JR_ABI_MINOR + 1] = {
	[0] = offsetof(struct jr_plugin, fini) + sizeof(void (*)(void)),
};

/* The fixed head every version has: abi_major, abi_minor, size. */
#define DESCRIPTOR_HEAD (3 * sizeof(uint32_t))

/* A file loaded through "/proc/self/fd/FD" (see the comment on top). */
struct loaded_file {
	dev_t dev;
	ino_t ino;
	int fd;
	unsigned int refs;              /* struct plugins using it; 0: pinned */
	char procname[32];              /* "/proc/self/fd/FD", the linker's name */
	struct loaded_file *next;
};

/* Guards loaded_files, and keeps a lookup-then-dlopen atomic. */
static pthread_mutex_t loaded_lock = PTHREAD_MUTEX_INITIALIZER;
static struct loaded_file *loaded_files;

struct plugin {
	char *name;
	char *path;                     /* DIR/NAME.so, for messages */
	void *handle;
	const struct jr_plugin *desc;   /* in the plugin's memory */
	struct loaded_file *file;       /* NULL when loaded by path */
};

/* One name of a plugin set: a loaded plugin, or why it was refused. */
struct set_entry {
	char *name;
	struct plugin *plugin;          /* owned; NULL when refused */
	char *error;                    /* owned; the refusal, when refused */
	int errnum;                     /* loader_open's errno, when refused */
};

struct plugin_set {
	char *dir;
	struct set_entry *v;
	size_t n, cap;
};

/* Format into ERR (if any) and set errno to E; for the refusal paths. */
static void JR_PRINTFLIKE(4, 5)
refuse(int e, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	errno = e;
}

static int
valid_name(const char *name)
{
	size_t len = strlen(name);

	/* NAME.so must fit in one path component (NAME_MAX, 255). */
	if (len == 0 || len > 250 || name[0] == '.')
		return 0;
	for (const char *p = name; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' ||
		    *p == '-'))
			return 0;
	}
	return 1;
}

static const char *
file_type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "a regular file";
	case S_IFDIR:
		return "a directory";
	case S_IFLNK:
		return "a symbolic link";
	case S_IFIFO:
		return "a FIFO";
	case S_IFSOCK:
		return "a socket";
	case S_IFCHR:
		return "a character device";
	case S_IFBLK:
		return "a block device";
	default:
		return "of an unknown type";
	}
}

/*
 * Check the owner and mode of WHAT ("plugin directory DIR" or "plugin
 * PATH").  Owned by root or by us, not writable by group or others.
 */
static int
check_trusted(const char *what, const struct stat *st, char *err,
    size_t errlen)
{
	uid_t me = geteuid();

	if (st->st_uid != 0 && st->st_uid != me) {
		if (me == 0)
			refuse(EPERM, err, errlen, "%s is owned by uid %lu: "
			    "expected root", what, (unsigned long)st->st_uid);
		else
			refuse(EPERM, err, errlen, "%s is owned by uid %lu: "
			    "expected root or uid %lu (jobrund's user)", what,
			    (unsigned long)st->st_uid, (unsigned long)me);
		return -1;
	}
	if ((st->st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		refuse(EPERM, err, errlen, "%s is writable by %s (mode %04o): "
		    "expected no write permission for group and others "
		    "(chmod go-w)", what,
		    (st->st_mode & S_IWGRP) && (st->st_mode & S_IWOTH) ?
		    "group and others" : (st->st_mode & S_IWGRP) ? "group" :
		    "others", (unsigned int)(st->st_mode & 07777));
		return -1;
	}
	return 0;
}

/* Copy MSG into ERR replacing each FROM with TO: dlerror() names the
 * "/proc/self/fd/N" we loaded, users know the path. */
static void
replace_copy(char *err, size_t errlen, const char *msg, const char *from,
    const char *to)
{
	size_t flen = strlen(from), tlen = strlen(to), o = 0;
	const char *p = msg, *q;

	if (errlen == 0)
		return;
	while (*p != '\0' && o + 1 < errlen) {
		if ((q = strstr(p, from)) == NULL)
			q = p + strlen(p);
		while (p < q && o + 1 < errlen)
			err[o++] = *p++;
		if (*p == '\0' || o + 1 >= errlen)
			break;
		for (size_t i = 0; i < tlen && o + 1 < errlen; i++)
			err[o++] = to[i];
		p += flen;
	}
	err[o] = '\0';
}

/* Look for a loaded file; loaded_lock held. */
static struct loaded_file *
loaded_find(dev_t dev, ino_t ino)
{
	struct loaded_file *lf;

	for (lf = loaded_files; lf != NULL; lf = lf->next)
		if (lf->dev == dev && lf->ino == ino)
			return lf;
	return NULL;
}

/* Drop one reference to LF, after its dlclose; loaded_lock held.  The
 * descriptor may only go when the linker no longer has the object. */
static void
loaded_release(struct loaded_file *lf)
{
	struct loaded_file **pp;
	void *h;

	if (lf->refs > 0)
		lf->refs--;
	if (lf->refs > 0)
		return;
	h = dlopen(lf->procname, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
	if (h != NULL) {
		/* Still mapped (NODELETE): keep the name's descriptor. */
		dlclose(h);
		return;
	}
	for (pp = &loaded_files; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == lf) {
			*pp = lf->next;
			break;
		}
	}
	close(lf->fd);
	free(lf);
}

/*
 * dlopen the checked descriptor FD (whose fstat is ST) into P.  Takes FD
 * over: it is kept for the name, or closed.  -1 with the reason in ERR.
 */
static int
load_fd(struct plugin *p, int fd, const struct stat *st, char *err,
    size_t errlen)
{
	struct loaded_file *lf, *created = NULL;
	char procname[32];
	struct stat pst;
	const char *why;

	pthread_mutex_lock(&loaded_lock);
	if ((lf = loaded_find(st->st_dev, st->st_ino)) != NULL) {
		/* Already loaded: use its name, so the linker finds it. */
		close(fd);
		fd = -1;
	} else {
		snprintf(procname, sizeof procname, "/proc/self/fd/%d", fd);
		if (stat(procname, &pst) == 0 && pst.st_dev == st->st_dev &&
		    pst.st_ino == st->st_ino) {
			created = lf = xcalloc(1, sizeof *lf);
			lf->dev = st->st_dev;
			lf->ino = st->st_ino;
			lf->fd = fd;
			memcpy(lf->procname, procname, sizeof procname);
			fd = -1;
		}
	}

	if (lf != NULL) {
		p->handle = dlopen(lf->procname, RTLD_NOW | RTLD_LOCAL);
		if (p->handle == NULL) {
			char msg[1024];

			why = dlerror();
			replace_copy(msg, sizeof msg,
			    why != NULL ? why : "unknown error", lf->procname,
			    p->path);
			if (created != NULL) {
				close(created->fd);
				free(created);
			}
			pthread_mutex_unlock(&loaded_lock);
			refuse(ENOEXEC, err, errlen, "cannot load %s: %s; a "
			    "missing library? try `ldd %s`", p->path, msg,
			    p->path);
			return -1;
		}
		if (created != NULL) {
			created->next = loaded_files;
			loaded_files = created;
		}
		lf->refs++;
		p->file = lf;
		pthread_mutex_unlock(&loaded_lock);
		return 0;
	}
	pthread_mutex_unlock(&loaded_lock);

	/* No usable /proc: load by path, then make sure it is what we
	 * checked (see the comment on top). */
	close(fd);
	log_debug("%s: /proc/self/fd unusable, loading by path", p->path);
	p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
	if (p->handle == NULL) {
		why = dlerror();
		refuse(ENOEXEC, err, errlen, "cannot load %s: %s; a missing "
		    "library? try `ldd %s`", p->path,
		    why != NULL ? why : "unknown error", p->path);
		return -1;
	}
	if (stat(p->path, &pst) != 0 || pst.st_dev != st->st_dev ||
	    pst.st_ino != st->st_ino) {
		dlclose(p->handle);
		p->handle = NULL;
		refuse(EAGAIN, err, errlen, "cannot load %s: the file changed "
		    "while it was being loaded: expected the file just checked",
		    p->path);
		return -1;
	}
	return 0;
}

/*
 * Check the descriptor SYM of P before any plugin code is called: its ELF
 * symbol is big enough to read, the ABI numbers and size are ones we
 * support, run and name are set and name is the file's.
 */
static int
check_descriptor(struct plugin *p, const void *sym, char *err, size_t errlen)
{
	const struct jr_plugin *d = sym;
	const ElfW(Sym) *esym = NULL;
	Dl_info info;
	void *extra = NULL;
	size_t need;

	/* The symbol's own size, when the linker knows it (0: unknown). */
	if (dladdr1(sym, &info, &extra, RTLD_DL_SYMENT) != 0 && extra != NULL) {
		esym = extra;
		/* ELF32_ST_TYPE: the same low 4 bits in both ELF classes. */
		if (ELF32_ST_TYPE(esym->st_info) == STT_FUNC) {
			refuse(ENOEXEC, err, errlen, "%s exports jr_plugin as a "
			    "function: expected a struct jr_plugin "
			    "(JR_PLUGIN_DEFINE)", p->path);
			return -1;
		}
		if (esym->st_size != 0 && esym->st_size < DESCRIPTOR_HEAD) {
			refuse(ENOEXEC, err, errlen, "%s: jr_plugin is %zu bytes: "
			    "expected a struct jr_plugin (at least %zu)",
			    p->path, (size_t)esym->st_size,
			    descriptor_size[0]);
			return -1;
		}
	}

	if (d->abi_major != JR_ABI_MAJOR) {
		refuse(ENOEXEC, err, errlen, "%s: plugin ABI %u.%u, but this "
		    "jobrund supports ABI %d.x (up to %d.%d): rebuild the plugin "
		    "against this jobrund's plugin.h", p->path, d->abi_major,
		    d->abi_minor, JR_ABI_MAJOR, JR_ABI_MAJOR, JR_ABI_MINOR);
		return -1;
	}
	if (d->abi_minor > JR_ABI_MINOR) {
		refuse(ENOEXEC, err, errlen, "%s: plugin ABI %u.%u needs a newer "
		    "jobrund: this one supports ABI %d.x up to %d.%d", p->path,
		    d->abi_major, d->abi_minor, JR_ABI_MAJOR, JR_ABI_MAJOR,
		    JR_ABI_MINOR);
		return -1;
	}
	need = descriptor_size[d->abi_minor];
	if (d->size < need) {
		refuse(ENOEXEC, err, errlen, "%s: descriptor is %u bytes, but ABI "
		    "%u.%u defines %zu: expected at least %zu bytes", p->path,
		    d->size, d->abi_major, d->abi_minor, need, need);
		return -1;
	}
	if (esym != NULL && esym->st_size != 0 && esym->st_size < need) {
		refuse(ENOEXEC, err, errlen, "%s: descriptor says %u bytes, but "
		    "the jr_plugin symbol is only %zu: expected at least %zu",
		    p->path, d->size, (size_t)esym->st_size, need);
		return -1;
	}
	if (d->run == NULL) {
		refuse(ENOEXEC, err, errlen, "%s: the descriptor has no run "
		    "function: expected one (run is required)", p->path);
		return -1;
	}
	if (d->name == NULL) {
		refuse(ENOEXEC, err, errlen, "%s: the descriptor has no name: "
		    "expected \"%s\"", p->path, p->name);
		return -1;
	}
	if (strcmp(d->name, p->name) != 0) {
		refuse(ENOEXEC, err, errlen, "%s: the descriptor's name is "
		    "\"%.64s\": expected \"%s\" (the file name without .so)",
		    p->path, d->name, p->name);
		return -1;
	}
	return 0;
}

struct plugin *
loader_open(const char *dir, const char *name, char *err, size_t errlen)
{
	struct plugin *p = NULL;
	struct stat dst, lst, fst;
	char *file = NULL, *what = NULL;
	const char *why;
	void *sym;
	int dfd = -1, fd = -1, saved;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (!valid_name(name)) {
		char shown[65];
		size_t i;

		/* Never echo control characters into the log. */
		for (i = 0; name[i] != '\0' && i < sizeof shown - 1; i++)
			shown[i] = name[i] >= 0x20 && name[i] < 0x7f ? name[i] :
			    '?';
		shown[i] = '\0';
		refuse(EINVAL, err, errlen, "cannot load plugin \"%s\" from %s: "
		    "invalid name: expected letters, digits, '_', '.' and '-', "
		    "not starting with '.'", shown, dir);
		return NULL;
	}

	p = xcalloc(1, sizeof *p);
	p->name = xstrdup(name);
	file = xasprintf("%s.so", name);
	p->path = xasprintf("%s/%s", dir, file);

	/* The directory: opened once, everything else relative to it. */
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd == -1) {
		if (errno == ENOTDIR)
			refuse(ENOTDIR, err, errlen, "cannot load %s: plugin "
			    "directory %s is not a directory", p->path, dir);
		else
			refuse(errno, err, errlen, "cannot load %s: plugin "
			    "directory %s: %s", p->path, dir, strerror(errno));
		goto fail;
	}
	if (fstat(dfd, &dst) == -1) {
		refuse(errno, err, errlen, "cannot load %s: plugin directory "
		    "%s: %s", p->path, dir, strerror(errno));
		goto fail;
	}
	what = xasprintf("cannot load %s: plugin directory %s", p->path, dir);
	if (check_trusted(what, &dst, err, errlen) == -1)
		goto fail;
	free(what);
	what = NULL;

	/* The file: lstat first, so a FIFO is never opened. */
	if (fstatat(dfd, file, &lst, AT_SYMLINK_NOFOLLOW) == -1) {
		if (errno == ENOENT)
			refuse(ENOENT, err, errlen, "cannot load %s: No such file "
			    "or directory: expected plugin %s in %s", p->path,
			    name, dir);
		else
			refuse(errno, err, errlen, "cannot load %s: %s", p->path,
			    strerror(errno));
		goto fail;
	}
	if (!S_ISREG(lst.st_mode)) {
		refuse(EPERM, err, errlen, "cannot load %s: it is %s: expected "
		    "a regular file", p->path, file_type_name(lst.st_mode));
		goto fail;
	}
	what = xasprintf("cannot load %s: it", p->path);
	if (check_trusted(what, &lst, err, errlen) == -1)
		goto fail;

	/* O_NONBLOCK: should a FIFO appear after all, do not hang on it. */
	fd = openat(dfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK);
	if (fd == -1) {
		refuse(errno, err, errlen, "cannot load %s: %s", p->path,
		    strerror(errno));
		goto fail;
	}
	if (fstat(fd, &fst) == -1) {
		refuse(errno, err, errlen, "cannot load %s: %s", p->path,
		    strerror(errno));
		goto fail;
	}
	if (fst.st_dev != lst.st_dev || fst.st_ino != lst.st_ino ||
	    !S_ISREG(fst.st_mode)) {
		refuse(EAGAIN, err, errlen, "cannot load %s: the file was "
		    "replaced while it was being checked: expected the same "
		    "file", p->path);
		goto fail;
	}
	/* The inode may have been chmod'ed since the lstat: judge this one. */
	if (check_trusted(what, &fst, err, errlen) == -1)
		goto fail;
	free(what);
	what = NULL;
	close(dfd);
	dfd = -1;

	if (load_fd(p, fd, &fst, err, errlen) == -1) {
		fd = -1;        /* taken over by load_fd */
		goto fail;
	}
	fd = -1;

	/* dlerror() clears the state, so NULL from dlsym is told apart. */
	dlerror();
	sym = dlsym(p->handle, JR_PLUGIN_SYMBOL);
	why = dlerror();
	if (sym == NULL || why != NULL) {
		refuse(ENOEXEC, err, errlen, "%s does not export %s: not a "
		    "jobrund plugin", p->path, JR_PLUGIN_SYMBOL);
		goto fail;
	}
	if (check_descriptor(p, sym, err, errlen) == -1)
		goto fail;
	p->desc = sym;
	free(file);
	log_debug("loaded plugin %s from %s (version %s)", name, p->path,
	    p->desc->version != NULL ? p->desc->version : "?");
	return p;

fail:
	saved = errno;
	free(what);
	if (fd != -1)
		close(fd);
	if (dfd != -1)
		close(dfd);
	free(file);
	loader_close(p);
	errno = saved;
	return NULL;
}

void
loader_close(struct plugin *p)
{
	int saved = errno;

	if (p == NULL)
		return;
	if (p->handle != NULL) {
		pthread_mutex_lock(&loaded_lock);
		dlclose(p->handle);
		if (p->file != NULL)
			loaded_release(p->file);
		pthread_mutex_unlock(&loaded_lock);
	}
	free(p->name);
	free(p->path);
	free(p);
	errno = saved;
}

const struct jr_plugin *
loader_descriptor(const struct plugin *p)
{
	return p->desc;
}

const char *
loader_path(const struct plugin *p)
{
	return p->path;
}

/*
 * Plugin sets.  Used from one thread (the main loop, or a worker); a set
 * is not locked.  A refusal is cached with the name, so every job that
 * uses a bad plugin reports it, and the file is not probed again until
 * the next config (a new set).
 */
struct plugin_set *
pluginset_new(const char *dir)
{
	struct plugin_set *set = xcalloc(1, sizeof *set);

	set->dir = xstrdup(dir);
	return set;
}

struct plugin *
pluginset_get(struct plugin_set *set, const char *name, char *err,
    size_t errlen)
{
	struct set_entry *e = NULL;
	char msg[1024];

	for (size_t i = 0; i < set->n; i++) {
		if (strcmp(set->v[i].name, name) == 0) {
			e = &set->v[i];
			break;
		}
	}
	if (e == NULL) {
		if (set->n == set->cap) {
			set->cap = set->cap ? set->cap * 2 : 8;
			set->v = xrealloc(set->v, set->cap * sizeof *set->v);
		}
		e = &set->v[set->n++];
		e->name = xstrdup(name);
		e->plugin = loader_open(set->dir, name, msg, sizeof msg);
		e->errnum = errno;
		e->error = e->plugin == NULL ? xstrdup(msg) : NULL;
	}
	if (e->plugin == NULL) {
		refuse(e->errnum, err, errlen, "%s", e->error);
		return NULL;
	}
	return e->plugin;
}

void
pluginset_free(struct plugin_set *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i < set->n; i++) {
		loader_close(set->v[i].plugin);
		free(set->v[i].name);
		free(set->v[i].error);
	}
	free(set->v);
	free(set->dir);
	free(set);
}
