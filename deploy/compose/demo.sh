#!/usr/bin/env bash
# The container demo (docker compose). For the same demo as local processes, without Docker,
# see the README's demo command.
#
#   deploy/compose/demo.sh up [--no-build]   images, OpenBao and its setup, config repo, start
#   deploy/compose/demo.sh commit [TEXT]     push a config commit; git-sync publishes it
#   deploy/compose/demo.sh down              stop and remove containers and volumes
#   deploy/compose/demo.sh setup-openbao     OpenBao's setup alone, for a stack started otherwise
#                                            (the container test): DEMO_OPENBAO_ADDR,
#                                            OPENBAO_ROOT_TOKEN and DEMO_APPROLE from the environment
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMPOSE=(docker-compose -f "$HERE/docker-compose.yml" -p sidecars-demo)
WORK=$HERE/.work
GIT_URL=git://127.0.0.1:9418/config.git
OPENBAO=${DEMO_OPENBAO_ADDR:-http://127.0.0.1:8200}
export DEMO_APPROLE=${DEMO_APPROLE:-$WORK/approle}

die() { echo "demo.sh: $*" >&2; exit 1; }
command -v docker-compose >/dev/null || die "docker-compose is needed (apt install docker-compose)"
command -v curl >/dev/null || die "curl is needed (apt install curl)"

wait_for() { # URL: wait up to 60s for a 200
    for _ in $(seq 1 120); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    die "$1 did not answer 200 within 60s (docker-compose -p sidecars-demo logs)"
}

random_hex() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

bao_api() { # METHOD PATH [JSON]: one OpenBao API call with the root token
    local args=(-sS --fail-with-body -o /dev/null -X "$1" -H "X-Vault-Token: $OPENBAO_ROOT_TOKEN")
    [[ $# -ge 3 ]] && args+=(-H "Content-Type: application/json" -d "$3")
    curl "${args[@]}" "$OPENBAO/v1/$2" || die "OpenBao: $1 /v1/$2 failed"
}

# OpenBao's PKI engine with its own root CA, a role per pod that issues that pod's SPIFFE ID
# only (5 s of backdating, nothing stored), a policy per pod allowing its own role only, and an
# AppRole per pod. The role_id and a new secret_id go to $DEMO_APPROLE/<pod>/ for the pod's
# secrets-agent containers. Safe to run again (OpenBao keeps its state while it runs).
setup_openbao() {
    if ! curl -fsS -H "X-Vault-Token: $OPENBAO_ROOT_TOKEN" "$OPENBAO/v1/sys/mounts" | grep -q '"pki/"'; then
        bao_api POST sys/mounts/pki '{"type": "pki", "config": {"max_lease_ttl": "720h"}}'
        bao_api POST pki/root/generate/internal \
            '{"common_name": "sidecars demo CA (OpenBao)", "ttl": "720h", "key_type": "ec", "key_bits": 256}'
        bao_api POST sys/auth/approle '{"type": "approle"}'
    fi
    local pod
    for pod in pod-a pod-b; do
        bao_api POST "pki/roles/$pod" "$(printf '{"allowed_domains": ["%s", "%s.demo.local"], "allow_bare_domains": true, "allow_subdomains": false, "allowed_uri_sans": ["spiffe://demo.local/ns/demo/sa/%s"], "key_type": "ec", "key_bits": 256, "max_ttl": "24h", "not_before_duration": "5s", "no_store": true}' "$pod" "$pod" "$pod")"
        bao_api PUT "sys/policies/acl/$pod" "$(printf '{"policy": "path \\"pki/issue/%s\\" { capabilities = [\\"update\\"] }"}' "$pod")"
        bao_api POST "auth/approle/role/$pod" "$(printf '{"token_policies": ["%s"], "token_ttl": "1h", "token_max_ttl": "24h"}' "$pod")"
        local dir=$DEMO_APPROLE/$pod secret_id
        secret_id=$(random_hex)
        bao_api POST "auth/approle/role/$pod/role-id" "$(printf '{"role_id": "demo-%s"}' "$pod")"
        bao_api POST "auth/approle/role/$pod/custom-secret-id" "$(printf '{"secret_id": "%s"}' "$secret_id")"
        mkdir -p "$dir"
        rm -f "$dir/role-id" "$dir/secret-id"
        printf 'demo-%s' "$pod" >"$dir/role-id"
        printf '%s' "$secret_id" >"$dir/secret-id"
        # The containers run as 65532: as root, give the files to that user alone; otherwise
        # they must be world-readable (test-only credentials of a dev server on 127.0.0.1).
        if [[ $(id -u) == 0 ]]; then
            chown -R 65532:65532 "$dir" && chmod 0500 "$dir" && chmod 0400 "$dir"/*
        else
            chmod 0755 "$dir" && chmod 0644 "$dir"/*
        fi
    done
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
    # OpenBao first (dev mode, with a root token of this demo's own), set up before the
    # secrets-agents log in to it.
    # The token goes to the project's .env too, so that docker-compose commands run by hand
    # see the same OpenBao configuration (and do not recreate it, empty).
    mkdir -p "$WORK/openbao"
    [[ -s $WORK/openbao/root-token ]] || (umask 077 && random_hex >"$WORK/openbao/root-token")
    OPENBAO_ROOT_TOKEN=$(cat "$WORK/openbao/root-token")
    (umask 077 && printf 'OPENBAO_ROOT_TOKEN=%s\n' "$OPENBAO_ROOT_TOKEN" >"$HERE/.env")
    "${COMPOSE[@]}" up -d openbao
    wait_for "$OPENBAO/v1/sys/health"
    setup_openbao
    # Once the pods run, `up` would run the one-time agents again beside their sidecars: the
    # setup above (for an OpenBao that restarted and forgot it) is all a second `up` does.
    running=$("${COMPOSE[@]}" ps -q pod-a-secrets-agent pod-b-secrets-agent 2>/dev/null | xargs -r docker inspect -f '{{.State.Running}}' | grep -c true || true)
    if [[ $running == 2 ]]; then
        echo "The demo is already up (OpenBao set up again); '$0 down' first to start afresh."
        exit 0
    fi
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
    wait_for http://127.0.0.1:9904/readyz
    wait_for http://127.0.0.1:9911/readyz
    wait_for http://127.0.0.1:9905/readyz
    wait_for http://127.0.0.1:9915/readyz
    cat <<TRY

The demo is up. Try:

  # pod-a's app calls pod-b through both ambassadors (plain HTTP -> mTLS -> plain HTTP);
  # pod-b's app names the caller from X-Forwarded-Client-Cert:
  ${COMPOSE[*]} run --rm client get http://127.0.0.1:15001/

  # a caller without a certificate is refused by pod-b's ambassador:
  docker run --rm --network sidecars-demo_mesh -v sidecars-demo_certs-b:/certs:ro \\
      ghcr.io/sidecars/demo-app:dev get --ca /certs/ca.crt https://pod-b:15443/
  curl -s 127.0.0.1:9911/metrics | grep -i tls

  # the pods' certificates: OpenBao issues them for 1 minute, each pod's secrets-agent renews
  # them at 2/3 of their life (about every 38 s) and the ambassadors reload them; watch the
  # serial change, and the agents' side of it:
  curl -s 127.0.0.1:9901/metrics | grep -E '^sidecar_(certificate_expiry.*identity.*CN=pod|tls_reloads)'
  curl -s 127.0.0.1:9905/metrics | grep -E '^secrets_agent_(fetches|publishes|secret_expiry)'
  BAO_ADDR=$OPENBAO BAO_TOKEN=\$(cat $WORK/openbao/root-token) bao read pki/cert/ca

  # the legacy app's XML status page as Prometheus metrics, and Prometheus scraping them:
  curl -s 127.0.0.1:9108/metrics
  curl -s '127.0.0.1:9090/api/v1/query?query=legacy_app_requests_total'

  # pod-a's access log, delivered line by line by its log-shipper to the log store:
  curl -s 127.0.0.1:8090/lines
  curl -s 127.0.0.1:9904/metrics | grep -E '^log_shipper_lines_(read|sent)'

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
setup-openbao)
    [[ -n ${OPENBAO_ROOT_TOKEN:-} ]] || die "setup-openbao needs OPENBAO_ROOT_TOKEN (and DEMO_OPENBAO_ADDR, DEMO_APPROLE)"
    setup_openbao
    ;;
down)
    "${COMPOSE[@]}" --profile tools down -v
    rm -rf "$WORK" "$HERE/.env"
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
    ;;
esac
