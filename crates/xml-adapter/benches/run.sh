#!/bin/sh
# xml-adapter benchmark: throughput vs bare quick-xml (and JSON vs bare json-event-parser), peak
# RSS on 100 MB (XML and JSON), added p99 latency.
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

python3 - "$tmp/tasks100.json" <<'PY'
import sys
task = '{"id":"0x7f9e3be88440","name":"server","references":8,"state":"idle","quantum":25,"events":0}'
head = '{"json-stats-version":"1.7","taskmgr":{"thread-model":"threaded","default-quantum":25,"tasks":['
tail = ']}}\n'
n = (100_000_000 - len(head) - len(tail)) // (len(task) + 1)
with open(sys.argv[1], "w") as f:
    f.write(head); f.write(",".join([task] * n)); f.write(tail)
PY
echo
echo "## Peak memory of \`xml-adapter check\` on a 100 MB JSON file (/usr/bin/time -v)"
echo
/usr/bin/time -v target/release/xml-adapter check \
  --config crates/xml-adapter/examples/mappings/bind9-json.yaml --input "$tmp/tasks100.json" \
  2>"$tmp/time" >"$tmp/out"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$tmp/time" | sed 's/^\s*/- /'
grep '^bind_tasks{' "$tmp/out" | sed 's/^/- output: /'
