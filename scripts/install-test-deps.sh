#!/usr/bin/env bash
# Installs what the tests need (scripts/deps/test.txt); scripts/test.sh runs it.
exec "$(dirname "$0")/install-deps.sh" test
