#!/usr/bin/env bash
# Installs the real programs the tests run against (peers, servers, checkers), from Debian's
# packages. Idempotent: installs only what is missing. Needs root or sudo on Debian/Ubuntu;
# elsewhere it lists what is missing and fails.
set -euo pipefail

# program -> Debian package
declare -A needs=(
  [nginx]=nginx            # proxy peer in the ambassador benchmark
  [haproxy]=haproxy        # proxy peer
  [stunnel4]=stunnel4      # TLS tunnel peer
  [wrk]=wrk                # load generator
  [named]=bind9            # a real legacy XML status source
  [prometheus]=prometheus  # a real scraper
  [promtool]=prometheus    # metrics format checker
  [git]=git                # fixture repositories and git daemon / http-backend
  [sshd]=openssh-server    # a real SSH git server
  [ssh-keygen]=openssh-client
  [dnsmasq]=dnsmasq-base   # a real DNS server
  [unshare]=util-linux     # PID 1 test
  [curl]=curl
  [/usr/bin/time]=time     # benchmarks read peak memory from GNU time
  [openssl]=openssl        # benchmark certificates for the peers
  [python3]=python3        # manifest validation
  [readelf]=binutils       # the image build refuses dynamically linked binaries
  [llvm-profdata-19]=llvm-19  # the ambassador's profile-guided image build (scripts/pgo.sh)
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing_pkgs=()
for prog in "${!needs[@]}"; do
  if ! command -v "$prog" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$prog" ] && [ ! -x "/usr/lib/git-core/$prog" ]; then
    missing_pkgs+=("${needs[$prog]}")
  fi
done
# git http-backend ships with git; git daemon needs git-daemon-run on some releases but not Debian 12.
if [ ! -x /usr/lib/git-core/git-http-backend ]; then missing_pkgs+=(git); fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "These packages are needed by the tests and this is not a Debian-like system: ${missing_pkgs[*]}" >&2
    exit 1
  fi
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "need root or sudo to install: ${missing_pkgs[*]}" >&2; exit 1
  fi
  echo "installing test dependencies: ${missing_pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
fi

# The manifest validation's Python packages, for whichever python3 is on PATH.
if ! python3 -c 'import yaml, kubernetes_validate' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive ${sudo:-} apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "installing Python packages for the manifest validation: pyyaml kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check pyyaml kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages pyyaml kubernetes-validate
fi

# Debian starts nginx/haproxy/named/ssh services on install where an init system runs; the tests
# start their own instances on free loopback ports, so the stock ones are not needed.
exit 0
