/*
 * main.c - jobrund's command line: parse the options design.md lists and
 * hand over to the part that does the work: `-t` (check the config),
 * `--once` (once.c), `--bench` (bench.c) or the daemon itself (daemon.c).
 *
 * Exit status: 0 after a clean run, 1 on a config or start-up error, 2 on
 * a usage error, 3 when --once or --bench saw a task fail.
 */
#include "config.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "jobrund.h"

#define DEFAULT_CONFIG JR_SYSCONF_DIR "/jobrund.conf"

static void
usage(FILE *fp)
{
	fprintf(fp,
"usage: jobrund [-c FILE] [-d] [-e] [-p PIDFILE]   run the daemon (foreground)\n"
"       jobrund [-c FILE] -t                      check the configuration\n"
"       jobrund [-c FILE] [-e] --once [JOB...]    run jobs once, print JSON results\n"
"       jobrund [-c FILE] --bench JOB [--workers N] [--repeat N] [--warm]\n"
"               [--json]                          compare sequential, thread and process mode\n"
"\n"
"  -c, --config FILE    configuration file (default " DEFAULT_CONFIG ")\n"
"  -t, --check-config   validate the configuration, plugins included, and exit\n"
"      --once           run the named jobs (default: every enabled job) once\n"
"      --bench JOB      run JOB's tasks sequentially, in thread and in process mode\n"
"      --workers N      --bench: workers per pool (default: the job's)\n"
"      --repeat N       --bench: run the job's inputs N times over (default 1)\n"
"      --warm           --bench: also time thread and process mode on warm pools,\n"
"                       as the daemon's later runs of a job find them (implied\n"
"                       for a job with prestart = true)\n"
"      --json           --bench: print one JSON document instead of the table\n"
"  -d, --daemonize      detach from the terminal (default: stay in the foreground)\n"
"  -e, --log-stderr     copy log lines to stderr\n"
"  -p, --pidfile FILE   write the daemon's pid to FILE\n"
"  -V, --version        print the version and exit\n"
"  -h, --help           print this help and exit\n");
}

/* -t: parse and validate everything, print each error as FILE:LINE. */
static int
check_config(const char *file)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	int rc = 0;

	log_init("jobrund", false, LOG_WARNING);
	cfg = cfg_load(file, &errs);
	if (cfg != NULL && cfg_load_plugins(cfg, &errs) == -1)
		rc = 1;
	if (cfg == NULL)
		rc = 1;
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	if (rc == 0)
		printf("%s: configuration OK\n", cfg->file);
	errlist_free(&errs);
	if (cfg)
		cfg_free(cfg);
	return rc;
}

int
main(int argc, char **argv)
{
	enum { OPT_ONCE = 256, OPT_BENCH, OPT_WORKERS, OPT_REPEAT, OPT_WARM,
	       OPT_JSON };
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 't' },
		{ "once", no_argument, NULL, OPT_ONCE },
		{ "bench", required_argument, NULL, OPT_BENCH },
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "repeat", required_argument, NULL, OPT_REPEAT },
		{ "warm", no_argument, NULL, OPT_WARM },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "daemonize", no_argument, NULL, 'd' },
		{ "log-stderr", no_argument, NULL, 'e' },
		{ "pidfile", required_argument, NULL, 'p' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = DEFAULT_CONFIG, *pidfile = NULL;
	bool check = false, once = false, daemonize = false, log_stderr = false;
	const char *bench = NULL, *workers = NULL, *repeat = NULL;
	bool warm = false, json = false;
	int c;

	while ((c = getopt_long(argc, argv, "c:tdep:Vh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': file = optarg; break;
		case 't': check = true; break;
		case OPT_ONCE: once = true; break;
		case OPT_BENCH: bench = optarg; break;
		case OPT_WORKERS: workers = optarg; break;
		case OPT_REPEAT: repeat = optarg; break;
		case OPT_WARM: warm = true; break;
		case OPT_JSON: json = true; break;
		case 'd': daemonize = true; break;
		case 'e': log_stderr = true; break;
		case 'p': pidfile = optarg; break;
		case 'V':
			printf("jobrund %s (plugin ABI %d.%d, worker protocol %d)\n",
			       PACKAGE_VERSION, JR_ABI_MAJOR, JR_ABI_MINOR, PROTO_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (check + once + (bench != NULL) > 1 ||
	    ((check || once || bench) && (daemonize || pidfile))) {
		fprintf(stderr, "jobrund: -t, --once, --bench and the daemon options "
			"(-d, -p) do not combine\n");
		usage(stderr);
		return 2;
	}
	if (optind < argc && !once) {
		fprintf(stderr, "jobrund: unexpected argument '%s' (job names go after --once)\n",
			argv[optind]);
		usage(stderr);
		return 2;
	}
	if (bench == NULL && (workers || repeat || warm || json)) {
		fprintf(stderr, "jobrund: --workers, --repeat, --warm and --json go "
			"with --bench\n");
		usage(stderr);
		return 2;
	}
	if (check)
		return check_config(file);
	if (bench)
		return bench_main(file, bench, workers, repeat, warm, json,
				  log_stderr);
	if (once)
		return once_main(file, argv + optind, argc - optind, log_stderr);
	return daemon_main(file, daemonize, pidfile, log_stderr);
}
