#!/bin/sh
# xml-adapter benchmark: throughput vs bare quick-xml, peak RSS on 100 MB, added p99 latency.
# Also the peak RSS of `xml-adapter check` on a 100 MB file, measured by /usr/bin/time -v.
set -eu
cd "$(dirname "$0")/../../.."
cargo bench -p xml-adapter --bench adapter 2>/dev/null | sed -n '/^## /,$p'

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/tasks100.xml" <<'PY'
import sys
t = open("crates/xml-adapter/tests/fixtures/bind9/tasks.xml").read()
o, c = t.index("<tasks>") + len("<tasks>"), t.index("</tasks>")
head, body, tail = t[:o], t[o:c], t[c:]
n = (100_000_000 - len(head) - len(tail)) // len(body)
with open(sys.argv[1], "w") as f:
    f.write(head); f.write(body * n); f.write(tail)
PY
cargo build -q --release -p xml-adapter --bin xml-adapter
echo
echo "## Peak memory of \`xml-adapter check\` on the 100 MB file (/usr/bin/time -v)"
echo
/usr/bin/time -v target/release/xml-adapter check \
  --config crates/xml-adapter/examples/mappings/bind9.yaml --input "$tmp/tasks100.xml" \
  2>"$tmp/time" >"$tmp/out"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$tmp/time" | sed 's/^\s*/- /'
grep '^bind_tasks{' "$tmp/out" | sed 's/^/- output: /'
