#!/usr/bin/env bash
# The container demo (docker compose). For the same demo as local processes, without Docker,
# see the README's demo command.
#
#   deploy/compose/demo.sh up [--no-build]   images, test-only certificates, config repo, start
#   deploy/compose/demo.sh commit [TEXT]     push a config commit; git-sync publishes it
#   deploy/compose/demo.sh down              stop and remove containers and volumes
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMPOSE=(docker-compose -f "$HERE/docker-compose.yml" -p sidecars-demo)
WORK=$HERE/.work
GIT_URL=git://127.0.0.1:9418/config.git
export DEMO_CERTS=$HERE/.certs

die() { echo "demo.sh: $*" >&2; exit 1; }
command -v docker-compose >/dev/null || die "docker-compose is needed (apt install docker-compose)"

wait_for() { # URL: wait up to 60s for a 200
    for _ in $(seq 1 120); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    die "$1 did not answer 200 within 60s (docker-compose -p sidecars-demo logs)"
}

commit() {
    local text=${1:-"greeting = hello at $(date -u +%H:%M:%S)"}
    git -C "$WORK/config" pull -q --rebase origin main 2>/dev/null || true
    printf '%s\n' "$text" >"$WORK/config/app.conf"
    git -C "$WORK/config" add app.conf
    git -C "$WORK/config" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "demo: $text"
    git -C "$WORK/config" push -q origin HEAD:main
    echo "pushed: $text"
}

case ${1:-} in
up)
    [[ ${2:-} == --no-build ]] || "$ROOT/scripts/images.sh"
    "$HERE/certs.sh"
    "${COMPOSE[@]}" up -d
    # The git server starts with an empty repository: seed it with the app's config.
    for _ in $(seq 1 60); do git ls-remote "$GIT_URL" >/dev/null 2>&1 && break; sleep 0.5; done
    if [[ ! -d $WORK/config/.git ]]; then
        mkdir -p "$WORK"
        git init -q -b main "$WORK/config"
        git -C "$WORK/config" remote add origin "$GIT_URL"
    fi
    git ls-remote --exit-code "$GIT_URL" main >/dev/null 2>&1 || commit "greeting = hello"
    wait_for http://127.0.0.1:9901/readyz
    wait_for http://127.0.0.1:9902/readyz
    wait_for http://127.0.0.1:9903/readyz
    wait_for http://127.0.0.1:9911/readyz
    cat <<TRY

The demo is up. Try:

  # pod-a's app calls pod-b through both ambassadors (plain HTTP -> mTLS -> plain HTTP);
  # pod-b's app names the caller from X-Forwarded-Client-Cert:
  ${COMPOSE[*]} run --rm client get http://127.0.0.1:15001/

  # a caller without a certificate is refused by pod-b's ambassador:
  docker run --rm --network sidecars-demo_mesh -v $DEMO_CERTS/ca.crt:/ca.crt:ro \\
      ghcr.io/sidecars/demo-app:dev get --ca /ca.crt https://pod-b:15443/
  curl -s 127.0.0.1:9911/metrics | grep -i tls

  # the legacy app's XML status page as Prometheus metrics, and Prometheus scraping them:
  curl -s 127.0.0.1:9108/metrics
  curl -s '127.0.0.1:9090/api/v1/query?query=legacy_app_requests_total'

  # a config commit that appears in the app's volume (git-sync polls every 5s):
  $0 commit "greeting = bonjour"
  ${COMPOSE[*]} run --rm client get http://127.0.0.1:8080/config/app.conf

  $0 down
TRY
    ;;
commit)
    [[ -d $WORK/config/.git ]] || die "run '$0 up' first"
    commit "${2:-}"
    ;;
down)
    "${COMPOSE[@]}" --profile tools down -v
    rm -rf "$WORK"
    ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
    ;;
esac
