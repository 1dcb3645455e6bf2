# Sourced by the ambassador's benchmark scripts: makes, in the current directory, an EC P-256 CA
# (ca.crt) and two leaves (server.*, client.*) with SPIFFE URI and DNS SANs, as the mesh's are.
# Each leaf comes as NAME.crt, NAME.key (PKCS#8) and NAME.pem (both, for HAProxy).
make_bench_certs() {
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.crt 2>/dev/null
  bench_leaf server spiffe://bench.local/ns/b/sa/server server.bench
  bench_leaf client spiffe://bench.local/ns/a/sa/client client.bench
}

bench_leaf() { # name spiffe dns
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key.sec1" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$1.key.sec1" -out "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=URI:%s,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$2" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  cat "$1.crt" "$1.key" > "$1.pem"
}
