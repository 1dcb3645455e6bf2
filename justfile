# The everyday commands. They wrap the same scripts and cargo commands the README uses, so
# `just` is optional: every recipe is one line you can run by hand.

# list the recipes
default:
    @just --list

# the local demo: the sidecars working together as local processes
demo:
    scripts/demo.sh

# every test (installs what the tests need)
test *ARGS:
    scripts/test.sh {{ARGS}}

# formatting and lints, as CI checks them
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# what CI runs
ci:
    .ci/run

# release build of every binary
build:
    cargo build --release --workspace --bins

# every benchmark, side by side with the peers (slow; results go to docs/benchmarks.md by hand)
bench:
    scripts/bench.sh

# the container images (FROM scratch, static binaries)
images:
    scripts/images.sh

# offline validation of the Kubernetes manifests
validate:
    scripts/validate-manifests.sh
