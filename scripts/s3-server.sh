#!/usr/bin/env bash
# A real S3-compatible server on loopback for kiln-sync's S3 remote: s3s-fs (an S3 server
# keeping objects in a folder), built from crates.io into target/tools/ inside this checkout.
#
#   scripts/s3-server.sh --install   install s3s-fs if missing (target/tools/bin/s3s-fs), then exit
#   scripts/s3-server.sh             install if missing, then run a server on a free loopback port
#                                    with a fresh temporary data folder, print the environment
#                                    that points kiln (and other S3 clients) at it, and keep
#                                    serving until interrupted (the data folder is removed then)
#
# Everything the install downloads or builds stays inside the checkout: cargo's registry
# cache in target/tools/cargo-home, the build in target/tools/build (removed after the
# install, with the unpacked sources), the binary in target/tools/bin. crates/kiln-sync/tests/s3.rs starts its own server
# from that binary (or from $KILN_S3S_FS when set).
set -euo pipefail

S3S_FS_VERSION=0.14.1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/target/tools"
BIN="$TOOLS/bin/s3s-fs"

install() {
    if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q " $S3S_FS_VERSION\$"; then
        return 0
    fi
    echo "installing s3s-fs $S3S_FS_VERSION into $TOOLS (a few minutes on 2 cores)" >&2
    mkdir -p "$TOOLS"
    local start=$SECONDS
    # The binary needs the crate's `binary` feature (clap, the tokio runtime, hyper's server).
    CARGO_HOME="$TOOLS/cargo-home" cargo install s3s-fs \
        --version "$S3S_FS_VERSION" --locked --features binary \
        --root "$TOOLS" --target-dir "$TOOLS/build" --force
    rm -rf "$TOOLS/build" "$TOOLS/cargo-home/registry/src" # (the downloaded .crate files stay)
    echo "installed $("$BIN" --version) in $((SECONDS - start)) s" >&2
}

case "${1:-}" in
--install)
    install
    exit 0
    ;;
"") ;;
-h | --help)
    sed -n '2,14p' "$0"
    exit 0
    ;;
*)
    echo "usage: $0 [--install]" >&2
    exit 2
    ;;
esac

install

DATA="$(mktemp -d "${TMPDIR:-/tmp}/kiln-s3s.XXXXXX")"
LOG="$DATA.log"
ACCESS_KEY="kiln-$RANDOM$RANDOM"
SECRET_KEY="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
BUCKET=kiln
mkdir -p "$DATA/$BUCKET" # a bucket is a folder in s3s-fs's root

pid=""
cleanup() {
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$DATA" "$LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port 0: the system picks a free port; s3s-fs logs the address it bound.
RUST_LOG=s3s_fs=info NO_COLOR=1 "$BIN" --host 127.0.0.1 --port 0 \
    --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$DATA" >"$LOG" 2>&1 &
pid=$!
endpoint=""
for _ in $(seq 1 100); do
    endpoint="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$LOG" | head -n1 || true)"
    [[ -n "$endpoint" ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$LOG" >&2
        echo "s3s-fs exited before it was serving" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z "$endpoint" ]]; then
    cat "$LOG" >&2
    echo "s3s-fs did not say where it listens" >&2
    exit 1
fi

cat <<EOF
# s3s-fs $S3S_FS_VERSION serving $DATA (bucket '$BUCKET' made) until interrupted
export AWS_ENDPOINT_URL=$endpoint
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
# remote URL: s3://$BUCKET/<prefix>
EOF
wait "$pid"
