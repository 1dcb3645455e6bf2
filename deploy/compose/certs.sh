#!/usr/bin/env bash
# Makes the demo's TEST-ONLY certificates: a CA and one certificate per pod, with SPIFFE IDs
# (spiffe://demo.local/ns/demo/sa/<pod>) and DNS names. Nothing here is committed; the keys
# are world-readable (0644) so that the containers' user 65532 can read a bind mount made by
# any host user: never do that with real keys (use a Secret with fsGroup in Kubernetes).
#
#   deploy/compose/certs.sh [DIR]      (default: deploy/compose/.certs; kept if already there)
set -euo pipefail
DIR=${1:-$(cd "$(dirname "$0")" && pwd)/.certs}
command -v openssl >/dev/null || { echo "certs.sh: openssl is needed (apt install openssl)" >&2; exit 1; }
if [[ -f $DIR/ca.crt && -f $DIR/pod-a/tls.crt && -f $DIR/pod-b/tls.crt ]]; then
    exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=sidecars demo CA (test only)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null
for pod in pod-a pod-b; do
    mkdir -p "$pod"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pod/tls.key" 2>/dev/null
    openssl req -new -key "$pod/tls.key" -subj "/CN=$pod" -out "$pod/tls.csr" 2>/dev/null
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=URI:spiffe://demo.local/ns/demo/sa/$pod,DNS:$pod" >"$pod/ext.cnf"
    openssl x509 -req -in "$pod/tls.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -sha256 -extfile "$pod/ext.cnf" -out "$pod/tls.crt" 2>/dev/null
    cp ca.crt "$pod/ca.crt"
    rm -f "$pod/tls.csr" "$pod/ext.cnf"
    chmod 0644 "$pod/tls.key"
done
rm -f ca.srl
echo "certs.sh: test-only certificates in $DIR"
