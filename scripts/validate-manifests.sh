#!/usr/bin/env bash
# Validates the deploy/ manifests offline; CI runs it.
#
#   scripts/validate-manifests.sh
#
# 1. the renderer's and the checker's own tests (each rule shown to catch what it is for);
# 2. deploy/kubernetes/rendered/ is what render.py produces from examples/ (no stale YAML);
# 3. every example renders the same objects with `kubectl kustomize` (when kubectl is
#    installed; a notice otherwise: kustomize is not packaged for Debian);
# 4. every rendered example against the Kubernetes 1.33 schemas (kubernetes-validate, strict)
#    and the project's rules (deploy/kubernetes/check.py);
# 5. the compose file parses (docker-compose config), when docker-compose is installed.
#
# Needs: python3 with PyYAML and kubernetes-validate (pip install kubernetes-validate).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
K8S_VERSION=${K8S_VERSION:-1.33.0}

python3 -c 'import yaml' 2>/dev/null || { echo "validate-manifests: python3 needs PyYAML (apt install python3-yaml)" >&2; exit 1; }
python3 -c 'import kubernetes_validate' 2>/dev/null || { echo "validate-manifests: python3 needs kubernetes-validate (pip install kubernetes-validate)" >&2; exit 1; }

echo "==> renderer and checker tests"
python3 -m unittest -q deploy/kubernetes/test_manifests.py

echo "==> rendered/ is up to date"
python3 deploy/kubernetes/render.py --check-rendered

if command -v kubectl >/dev/null; then
    echo "==> kubectl kustomize renders every example (compared in the tests above)"
    for d in deploy/kubernetes/examples/*/; do kubectl kustomize "$d" >/dev/null; done
else
    echo "notice: kubectl is not installed; the renderer was not compared with kustomize"
fi

echo "==> Kubernetes $K8S_VERSION schemas and the project's rules"
python3 deploy/kubernetes/check.py --kubernetes-version "$K8S_VERSION" deploy/kubernetes/rendered/*.yaml

if [[ -f deploy/compose/docker-compose.yml ]]; then
    if command -v docker-compose >/dev/null; then
        echo "==> docker-compose config"
        # The certificates are made at `up`; point the file at a scratch directory to parse it.
        DEMO_CERTS=$(mktemp -d) docker-compose -f deploy/compose/docker-compose.yml config -q
    else
        echo "notice: docker-compose is not installed; the compose file was not parsed"
    fi
fi
echo "validate-manifests: ok"
