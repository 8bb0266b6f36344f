/*
 * fuzz_config.c - libFuzzer target: the config parser and validator, as
 * `jobrund -t` runs them (cfg_load, then cfg_load_plugins: the plugins
 * validate their settings).
 *
 * Each input is written to DIR/fuzz.conf in a temporary directory and
 * loaded from there.  DIR also holds inc.conf (a valid fragment) and a
 * plugin directory with copies of the built plugins (FUZZ_PLUGIN_SOURCES),
 * whatever plugin_dir the input names.  An input that @includes anything
 * but inc.conf or fuzz.conf is skipped: config files are trusted to be
 * root's, and one including /dev/zero would only hang the fuzzer.
 */
#include "config.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

#ifndef FUZZ_PLUGIN_SOURCES
#define FUZZ_PLUGIN_SOURCES ""
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[] = "/tmp/jobrund-fuzz-XXXXXX";
static char *conf_path, *plugin_dir;

static void
fuzz_rm_rf(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	while (d != NULL && (de = readdir(d)) != NULL) {
		char *p;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		p = xasprintf("%s/%s", dir, de->d_name);
		if (unlink(p) == -1)
			fuzz_rm_rf(p);
		free(p);
	}
	if (d != NULL)
		closedir(d);
	rmdir(dir);
}

static void
fuzz_cleanup(void)
{
	fuzz_rm_rf(fuzz_dir);
	free(conf_path);
	free(plugin_dir);
}

static void
fuzz_copy(const char *from, const char *to)
{
	char buf[65536];
	ssize_t n;
	int in, out;

	if ((in = open(from, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	if ((out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) == -1) {
		close(in);
		return;
	}
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, (size_t)n) != n)
			break;
	close(in);
	close(out);
}

/* The plugins the harness offers: those that are cheap to initialise
 * (not python or http, whose libraries keep global state). */
static bool
fuzz_wanted(const char *name)
{
	static const char *const names[] = {
		"square.so", "cpu.so", "sleep.so", "exec.so", "settings.so",
		"notsafe.so", "badabi.so", "nosymbol.so", "flaky.so",
	};

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

static void
fuzz_setup(void)
{
	char *sources, *src, *save = NULL;
	FILE *fp;

	if (mkdtemp(fuzz_dir) == NULL) {
		perror("mkdtemp");
		abort();
	}
	atexit(fuzz_cleanup);
	log_init("jobrund-fuzz", false, LOG_EMERG);
	conf_path = xasprintf("%s/fuzz.conf", fuzz_dir);
	plugin_dir = xasprintf("%s/plugins", fuzz_dir);
	if (mkdir(plugin_dir, 0755) == -1) {
		perror(plugin_dir);
		abort();
	}
	sources = xstrdup(FUZZ_PLUGIN_SOURCES);
	for (src = strtok_r(sources, ":", &save); src != NULL;
	     src = strtok_r(NULL, ":", &save)) {
		DIR *d = opendir(src);
		struct dirent *de;

		while (d != NULL && (de = readdir(d)) != NULL) {
			char *from, *to;

			if (!fuzz_wanted(de->d_name))
				continue;
			from = xasprintf("%s/%s", src, de->d_name);
			to = xasprintf("%s/%s", plugin_dir, de->d_name);
			fuzz_copy(from, to);
			free(from);
			free(to);
		}
		if (d != NULL)
			closedir(d);
	}
	free(sources);
	{
		char *inc = xasprintf("%s/inc.conf", fuzz_dir);

		if ((fp = fopen(inc, "w")) != NULL) {
			fputs("{ name = \"inc\"; plugin = \"square\"; "
			      "mode = \"thread\"; inputs = [ 1, 2 ]; }\n", fp);
			fclose(fp);
		}
		free(inc);
	}
}

/* Whether every @include in DATA names inc.conf or fuzz.conf. */
static bool
fuzz_includes_ok(const char *text)
{
	const char *p = text;

	while ((p = strcasestr(p, "@include")) != NULL) {
		p += strlen("@include");
		p += strspn(p, " \t");
		if (strncmp(p, "\"inc.conf\"", 10) != 0 &&
		    strncmp(p, "\"fuzz.conf\"", 11) != 0)
			return false;
	}
	return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	char *text;
	FILE *fp;

	if (conf_path == NULL)
		fuzz_setup();
	/* libconfig reads up to a NUL: what follows one is not parsed, but
	 * our integer-literal pass must cope with it all the same. */
	text = xmalloc(size + 1);
	memcpy(text, data, size);
	text[size] = '\0';
	if (!fuzz_includes_ok(text)) {
		free(text);
		return 0;
	}
	free(text);
	if ((fp = fopen(conf_path, "w")) == NULL) {
		perror(conf_path);
		abort();
	}
	if (size > 0 && fwrite(data, 1, size, fp) != size) {
		perror(conf_path);
		abort();
	}
	fclose(fp);

	cfg = cfg_load(conf_path, &errs);
	if (cfg != NULL) {
		free(cfg->plugin_dir);
		cfg->plugin_dir = xstrdup(plugin_dir);
		(void)cfg_load_plugins(cfg, &errs);
		for (size_t i = 0; i < cfg->njobs; i++)
			if (cfg->jobs[i].name == NULL || cfg->jobs[i].plugin_name == NULL)
				abort();        /* a config that loads has both */
		cfg_free(cfg);
	} else if (errs.n == 0) {
		abort();                /* a refused config says why */
	}
	errlist_free(&errs);
	return 0;
}
