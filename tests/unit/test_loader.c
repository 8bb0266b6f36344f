/*
 * test_loader.c - unit tests for loader.c: which plugin files are loaded
 * and which are refused, with what message, and plugin sets' caching.
 *
 * Each test works in its own mkdtemp() plugin directory, into which it
 * copies the real built plugins (from $JR_BUILDDIR/plugins/.libs and
 * $JR_BUILDDIR/tests/plugins/.libs, as `make check` sets it up), so what
 * is tested is the loader against real shared objects.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobrund.h"

struct fixture {
	char dir[512];
	char err[1024];
};

static const char *
builddir(void)
{
	const char *d = getenv("JR_BUILDDIR");

	return d != NULL && *d != '\0' ? d : ".";
}

/* Copy the built NAME.so from SUB/.libs into the fixture's dir as
 * AS.so (AS NULL: the same name), mode 0644. */
static void
install_as(struct fixture *fx, const char *sub, const char *name,
    const char *as)
{
	char src[PATH_MAX], dst[PATH_MAX], buf[65536];
	int in, out;
	ssize_t n;

	snprintf(src, sizeof src, "%s/%s/.libs/%s.so", builddir(), sub, name);
	snprintf(dst, sizeof dst, "%s/%s.so", fx->dir, as != NULL ? as : name);
	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in == -1)
		fail_msg("cannot open %s: %s (run `make check`, which builds "
		    "the plugins and sets JR_BUILDDIR)", src, strerror(errno));
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_int_not_equal(out, -1);
	while ((n = read(in, buf, sizeof buf)) > 0)
		assert_int_equal(write(out, buf, (size_t)n), n);
	assert_int_equal(n, 0);
	close(in);
	assert_int_equal(fchmod(out, 0644), 0);
	assert_int_equal(close(out), 0);
}

static void
install(struct fixture *fx, const char *sub, const char *name)
{
	install_as(fx, sub, name, NULL);
}

static char *
path_in(struct fixture *fx, const char *file, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", fx->dir, file);
	return buf;
}

/* Expect DIR/NAME to be refused with a message containing every one of
 * the NULL-terminated strings after NAME (and the path). */
static void
expect_refused(struct fixture *fx, const char *dir, const char *name, ...)
{
	struct plugin *p;
	const char *want;
	va_list ap;
	int saved;

	fx->err[0] = '\0';
	p = loader_open(dir, name, fx->err, sizeof fx->err);
	saved = errno;
	if (p != NULL) {
		loader_close(p);
		fail_msg("%s/%s.so was loaded, expected a refusal", dir, name);
	}
	print_message("# refused: %s\n", fx->err);
	assert_true(fx->err[0] != '\0');
	va_start(ap, name);
	while ((want = va_arg(ap, const char *)) != NULL) {
		if (strstr(fx->err, want) == NULL)
			fail_msg("refusal \"%s\" does not mention \"%s\"", fx->err,
			    want);
	}
	va_end(ap);
	errno = saved;  /* for the caller to check */
}

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof *fx);
	const char *tmp = getenv("TMPDIR");

	if (fx == NULL)
		return -1;
	snprintf(fx->dir, sizeof fx->dir, "%s/jr-loader-XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(fx->dir) == NULL || chmod(fx->dir, 0755) == -1) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;
	int r;

	chmod(fx->dir, 0755);
	r = nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(fx);
	return r;
}

static void
test_square_loads(void **state)
{
	struct fixture *fx = *state;
	const struct jr_plugin *d;
	struct plugin *p;
	char path[PATH_MAX];

	install(fx, "plugins", "square");
	p = loader_open(fx->dir, "square", fx->err, sizeof fx->err);
	if (p == NULL)
		fail_msg("square refused: %s", fx->err);
	d = loader_descriptor(p);
	assert_non_null(d);
	assert_string_equal(d->name, "square");
	assert_true(d->flags & JR_PLUGIN_THREAD_SAFE);
	assert_int_equal(d->abi_major, JR_ABI_MAJOR);
	assert_non_null(d->run);
	assert_string_equal(loader_path(p), path_in(fx, "square.so", path,
	    sizeof path));
	loader_close(p);
}

static void
test_badabi_refused(void **state)
{
	struct fixture *fx = *state;

	install(fx, "tests/plugins", "badabi");
	expect_refused(fx, fx->dir, "badabi", "badabi.so", "ABI", "99",
	    (char *)NULL);
}

static void
test_nosymbol_refused(void **state)
{
	struct fixture *fx = *state;

	install(fx, "tests/plugins", "nosymbol");
	expect_refused(fx, fx->dir, "nosymbol", "nosymbol.so", "jr_plugin",
	    "not a jobrund plugin", (char *)NULL);
}

static void
test_writable_file_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	install(fx, "plugins", "square");
	path_in(fx, "square.so", path, sizeof path);
	assert_int_equal(chmod(path, 0664), 0);
	expect_refused(fx, fx->dir, "square", "square.so", "writable",
	    "group", (char *)NULL);
	assert_int_equal(chmod(path, 0646), 0);
	expect_refused(fx, fx->dir, "square", "writable", "others",
	    (char *)NULL);
}

static void
test_writable_dir_refused(void **state)
{
	struct fixture *fx = *state;

	install(fx, "plugins", "square");
	assert_int_equal(chmod(fx->dir, 0775), 0);
	expect_refused(fx, fx->dir, "square", "plugin directory", "writable",
	    (char *)NULL);
	assert_int_equal(chmod(fx->dir, 0757), 0);
	expect_refused(fx, fx->dir, "square", "writable", (char *)NULL);
}

static void
test_symlink_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	/* A trustworthy target: only the link itself is wrong. */
	install_as(fx, "plugins", "square", "target");
	assert_int_equal(symlink("target.so", path_in(fx, "square.so", path,
	    sizeof path)), 0);
	expect_refused(fx, fx->dir, "square", "symbolic link",
	    "regular file", (char *)NULL);
}

static void
test_directory_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	assert_int_equal(mkdir(path_in(fx, "x.so", path, sizeof path), 0755),
	    0);
	expect_refused(fx, fx->dir, "x", "x.so", "directory", "regular file",
	    (char *)NULL);
}

static void
test_fifo_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	/* Would hang in open(2) if the loader opened it before checking. */
	assert_int_equal(mkfifo(path_in(fx, "f.so", path, sizeof path), 0644),
	    0);
	expect_refused(fx, fx->dir, "f", "FIFO", (char *)NULL);
}

static void
test_missing_refused(void **state)
{
	struct fixture *fx = *state;

	expect_refused(fx, fx->dir, "nosuch", "nosuch.so", "No such file",
	    (char *)NULL);
	assert_int_equal(errno, ENOENT);
}

static void
test_not_a_directory(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	install(fx, "plugins", "square");
	path_in(fx, "square.so", path, sizeof path);
	expect_refused(fx, path, "square", "not a directory", (char *)NULL);
}

static void
test_invalid_names_refused(void **state)
{
	static const char *const bad[] = {
		"../x", ".hidden", "", "a/b", "x y", "..", "sq\nuare",
	};
	struct fixture *fx = *state;

	install(fx, "plugins", "square");
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		expect_refused(fx, fx->dir, bad[i], "invalid name",
		    (char *)NULL);
		assert_int_equal(errno, EINVAL);
	}
}

static void
test_owner_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];

	/* Not skip(): cmocka 1.1.5 prints "not ok N # SKIP", which
	 * automake's TAP driver counts as a failure. */
	if (geteuid() != 0) {
		print_message("# owner checks not run: chown needs root\n");
		return;
	}
	install(fx, "plugins", "square");
	path_in(fx, "square.so", path, sizeof path);
	assert_int_equal(chown(path, 65534, 65534), 0);
	expect_refused(fx, fx->dir, "square", "owned by uid 65534",
	    (char *)NULL);
	assert_int_equal(chown(path, 0, 0), 0);
	assert_int_equal(chown(fx->dir, 65534, 65534), 0);
	expect_refused(fx, fx->dir, "square", "plugin directory",
	    "owned by uid 65534", (char *)NULL);
}

static void
test_name_mismatch_refused(void **state)
{
	struct fixture *fx = *state;

	install_as(fx, "plugins", "square", "other");
	expect_refused(fx, fx->dir, "other", "other.so", "\"square\"",
	    "expected \"other\"", (char *)NULL);
}

static void
test_not_elf_refused(void **state)
{
	struct fixture *fx = *state;
	char path[PATH_MAX];
	FILE *fp;

	fp = fopen(path_in(fx, "junk.so", path, sizeof path), "w");
	assert_non_null(fp);
	fputs("not an ELF file\n", fp);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(chmod(path, 0644), 0);
	expect_refused(fx, fx->dir, "junk", "cannot load", "junk.so", "ldd",
	    (char *)NULL);
	/* The message names the file, not the /proc/self/fd/N it was
	 * loaded through. */
	assert_null(strstr(fx->err, "/proc/self/fd"));
}

/*
 * glibc's dlopen returns an already loaded object whose name matches, and
 * the loader names objects "/proc/self/fd/N": a reused descriptor number
 * must never hand back the previous plugin.
 */
static void
test_reload_other_plugin(void **state)
{
	struct fixture *fx = *state;
	struct plugin *a, *b, *c;

	install(fx, "plugins", "square");
	install(fx, "plugins", "cpu");
	install(fx, "plugins", "sleep");

	a = loader_open(fx->dir, "square", fx->err, sizeof fx->err);
	assert_non_null(a);
	b = loader_open(fx->dir, "square", fx->err, sizeof fx->err);
	assert_non_null(b);
	assert_string_equal(loader_descriptor(b)->name, "square");
	loader_close(a);
	c = loader_open(fx->dir, "cpu", fx->err, sizeof fx->err);
	assert_non_null(c);
	assert_string_equal(loader_descriptor(c)->name, "cpu");
	loader_close(b);
	loader_close(c);

	for (int i = 0; i < 3; i++) {
		static const char *const names[] = { "square", "cpu", "sleep" };

		a = loader_open(fx->dir, names[i], fx->err, sizeof fx->err);
		if (a == NULL)
			fail_msg("%s refused: %s", names[i], fx->err);
		assert_string_equal(loader_descriptor(a)->name, names[i]);
		loader_close(a);
	}
}

static void
test_pluginset_caches(void **state)
{
	struct fixture *fx = *state;
	struct plugin_set *set;
	struct plugin *p1, *p2;
	char path[PATH_MAX], first[1024];

	install(fx, "plugins", "square");
	install(fx, "tests/plugins", "badabi");
	set = pluginset_new(fx->dir);

	p1 = pluginset_get(set, "square", fx->err, sizeof fx->err);
	if (p1 == NULL)
		fail_msg("square refused: %s", fx->err);
	/* Cached: found even once the file is gone. */
	assert_int_equal(unlink(path_in(fx, "square.so", path, sizeof path)),
	    0);
	p2 = pluginset_get(set, "square", fx->err, sizeof fx->err);
	assert_ptr_equal(p1, p2);

	assert_null(pluginset_get(set, "badabi", first, sizeof first));
	assert_non_null(strstr(first, "ABI"));
	/* The refusal is cached too, and reported again, word for word. */
	assert_int_equal(unlink(path_in(fx, "badabi.so", path, sizeof path)),
	    0);
	fx->err[0] = '\0';
	assert_null(pluginset_get(set, "badabi", fx->err, sizeof fx->err));
	assert_string_equal(fx->err, first);

	assert_null(pluginset_get(set, "../x", fx->err, sizeof fx->err));
	assert_non_null(strstr(fx->err, "invalid name"));
	pluginset_free(set);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_square_loads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_badabi_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_nosymbol_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writable_file_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writable_dir_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_directory_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fifo_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_directory, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid_names_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_owner_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_name_mismatch_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_elf_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload_other_plugin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pluginset_caches, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
