# scripts/lib.sh - shared by the quick-start scripts (bootstrap, check, demo).
#
# Sourced, never run.  Provides:
#   JR_ROOT                the repository root (worked out from this file)
#   ensure_packages [PKGS] install the Debian packages the build needs (or
#                          PKGS), only those missing (apt-get; sudo when
#                          not root)
#   ensure_built DIR ARGS  configure (VPATH, in DIR under the root) and build,
#                          redoing only the steps that are out of date
# Everything here is safe under `set -eu`.
# shellcheck shell=bash

# The Debian packages jobrund needs to build and test: the one list.
JR_PACKAGES="build-essential autoconf automake libtool pkg-config \
libconfig-dev libjansson-dev liburing-dev libsqlite3-dev libcmocka-dev libcurl4-openssl-dev python3-dev \
python3"

# What `make fuzz` needs besides (.ci/run installs them): clang, libFuzzer
# and the sanitizer runtimes of Debian 12's clang 14.
JR_FUZZ_PACKAGES="clang libclang-rt-14-dev"

JR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Plugins are refused when group- or other-writable, and Debian gives users
# umask 002: build with 022 so the built plugins can be loaded.
umask 022

say() { printf '==> %s\n' "$*"; }
die() { printf '==> error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run '$*': run as root or install sudo"
	fi
}

ensure_packages() {
	local pkg missing="" wanted=${1:-$JR_PACKAGES}
	if ! command -v dpkg-query >/dev/null 2>&1; then
		say "not a Debian system: make sure these are installed: $wanted"
		return 0
	fi
	for pkg in $wanted; do
		case "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" in
		*" installed") ;;
		*) missing="$missing $pkg" ;;
		esac
	done
	if [ -z "$missing" ]; then
		return 0
	fi
	say "installing missing packages:$missing"
	# $missing is a list of words: split it on purpose.
	# shellcheck disable=SC2086
	if ! as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends $missing; then
		say "install failed; updating the package lists and retrying"
		as_root apt-get update
		# shellcheck disable=SC2086
		as_root env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $missing
	fi
}

# True when file $1 is missing or older than any of the files after it.
is_stale() {
	local target=$1 dep
	shift
	[ -e "$target" ] || return 0
	for dep in "$@"; do
		if [ "$dep" -nt "$target" ]; then
			return 0
		fi
	done
	return 1
}

# ensure_built DIR [configure args...]: DIR is relative to the root (or
# absolute).  The configure arguments are remembered in DIR/.configure-args;
# different ones reconfigure.  With none, DIR keeps the ones it was last
# configured with (so scripts/demo reuses the build scripts/check made).
ensure_built() {
	local dir=$1 stamp args
	local -a saved
	shift
	case "$dir" in
	/*) ;;
	*) dir="$JR_ROOT/$dir" ;;
	esac
	stamp="$dir/.configure-args"
	if [ $# -eq 0 ] && [ -s "$stamp" ]; then
		mapfile -t saved <"$stamp"
		set -- "${saved[@]}"
	fi

	if is_stale "$JR_ROOT/configure" "$JR_ROOT/configure.ac" "$JR_ROOT/Makefile.am"; then
		say "autoreconf -fi"
		(cd "$JR_ROOT" && autoreconf -fi)
	fi

	if [ "$dir" != "$JR_ROOT" ] && [ -e "$JR_ROOT/config.status" ]; then
		die "the source tree is configured in place, which blocks the build in ${dir#"$JR_ROOT"/}/: run 'make distclean' in $JR_ROOT and retry"
	fi

	mkdir -p "$dir"
	args=$(if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi)
	if [ ! -e "$dir/Makefile" ] || is_stale "$dir/config.status" "$JR_ROOT/configure" ||
		[ ! -e "$stamp" ] || [ "$(cat "$stamp")" != "$args" ]; then
		say "configure $* (in ${dir#"$JR_ROOT"/}/)"
		rm -f "$stamp"
		(cd "$dir" && "$JR_ROOT/configure" "$@")
		if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi >"$stamp"
	fi

	say "make (in ${dir#"$JR_ROOT"/}/)"
	make -C "$dir" -j"$(nproc 2>/dev/null || echo 2)"
}
