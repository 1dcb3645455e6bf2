#!/usr/bin/env bash
# Installs what is missing from one or more dependency lists in scripts/deps/ (one line per
# need; the format is at the top of scripts/deps/test.txt). Idempotent: a need already met
# costs nothing. Debian/Ubuntu packages through apt-get (as root or through sudo), Python
# packages through pip for the python3 on PATH; elsewhere it lists what is missing and fails.
#
#   scripts/install-deps.sh test [bench ...]
set -euo pipefail
DEPS="$(cd "$(dirname "$0")" && pwd)/deps"
# One install at a time (the test and benchmark scripts may start together): apt and pip
# refuse a second concurrent run rather than wait.
exec 9>"${TMPDIR:-/tmp}/sidecars-install-deps.lock"
flock 9
[ $# -gt 0 ] || { echo "usage: $0 LIST... (lists: $(cd "$DEPS" && ls | sed 's/\.txt$//' | tr '\n' ' '))" >&2; exit 2; }

met() { # CHECK -> whether it is there
  case $1 in
    py:*) python3 -c "import ${1#py:}" 2>/dev/null ;;
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ;;
  esac
}

# A `deb` need is a Debian package that conflicts with another on the lists (syslog-ng-core and
# rsyslog are both the system's log daemon): it is unpacked, not installed, under
# /opt/deb/PACKAGE (its CHECK is a path there), and what it depends on is installed.
deb_unpack() { # PACKAGE
  local dir tmp
  dir=/opt/deb/$1 tmp=$(mktemp -d)
  (cd "$tmp" && $sudo apt-get download -qq "$1" 2>/dev/null)
  $sudo mkdir -p "$dir"
  $sudo dpkg-deb -x "$tmp"/"$1"_*.deb "$dir"
  # Its dependencies (the first of each alternative), without versions.
  dpkg-deb -f "$tmp"/"$1"_*.deb Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep -v '^$'
  rm -rf "$tmp"
}

apt_missing=(); pip_missing=(); deb_missing=(); deb_all=()
for list in "$@"; do
  file="$DEPS/$list.txt"
  [ -f "$file" ] || { echo "install-deps: no list $file" >&2; exit 2; }
  while read -r kind check package _; do
    case $kind in ''|'#'*) continue ;; esac
    [ "$kind" = deb ] && deb_all+=("$package")
    met "$check" && continue
    case $kind in
      apt) apt_missing+=("$package") ;;
      pip) pip_missing+=("$package") ;;
      deb) deb_missing+=("$package") ;;
      *) echo "install-deps: $file: unknown kind '$kind'" >&2; exit 2 ;;
    esac
  done <"$file"
done
if [ ${#pip_missing[@]} -gt 0 ] && ! python3 -m pip --version >/dev/null 2>&1; then apt_missing+=(python3-pip); fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
if [ ${#apt_missing[@]} -gt 0 ]; then
  mapfile -t apt_missing < <(printf '%s\n' "${apt_missing[@]}" | sort -u)
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian-like system; install these (Debian package names): ${apt_missing[*]}" >&2
    exit 1
  fi
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: need root or sudo to install: ${apt_missing[*]}" >&2
    exit 1
  fi
  echo "installing (apt): ${apt_missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
if [ ${#deb_missing[@]} -gt 0 ]; then
  mapfile -t deb_missing < <(printf '%s\n' "${deb_missing[@]}" | sort -u)
  command -v dpkg-deb >/dev/null 2>&1 || { echo "install-deps: unpacking ${deb_missing[*]} needs Debian's dpkg-deb" >&2; exit 1; }
  [ ${#apt_missing[@]} -gt 0 ] || $sudo apt-get update -qq
  for package in "${deb_missing[@]}"; do
    echo "unpacking (deb): $package into /opt/deb/$package"
    # A dependency that is itself unpacked (syslog-ng-mod-http's syslog-ng-core) is not installed.
    mapfile -t deps < <(deb_unpack "$package" | grep -vxF -f <(printf '%s\n' "${deb_all[@]}"))
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${deps[@]}" >/dev/null
  done
fi
if [ ${#pip_missing[@]} -gt 0 ]; then
  mapfile -t pip_missing < <(printf '%s\n' "${pip_missing[@]}" | sort -u)
  echo "installing (pip): ${pip_missing[*]}"
  # For the python3 on PATH (not sudo's); Debian 12's refuses installs outside a virtual
  # environment unless told (PEP 668).
  python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pip_missing[@]}"
fi
# Debian starts nginx, haproxy, named and sshd as services on install where an init system runs;
# the tests and benchmarks start their own instances on free loopback ports and need none of them.
