#!/usr/bin/env bash
# Installs what the benchmarks need (scripts/deps/bench.txt): the peers, load generators and
# measuring tools; scripts/bench.sh runs it.
exec "$(dirname "$0")/install-deps.sh" bench
