#!/usr/bin/env bash
# Import throughput from Fireproof, beside Fireproof's own open-and-read-all, in one run.
#
#   scripts/bench-import-fireproof.sh JS_HARNESS [N] [OUT]
#
# JS_HARNESS is a writable copy of the shared benchmark harness (../shared/bench) with
# `npm ci` done (it has @fireproof/core 0.24.19). For each load mode (`seq`: one put per
# document, one commit each; `bulk`: bulks of 1,000), the harness's `alldocs` workload writes an
# N-document ledger with Fireproof in a child process and times Fireproof opening it and
# reading every document; then `kiln import-fireproof` imports that same ledger into a fresh
# store, timed. Prints one JSON line per run (Fireproof's, then kiln's) to OUT (default stdout).
# Needs a release build: cargo build --release -p kiln-cli.
set -euo pipefail

JS="${1:?usage: $0 JS_HARNESS [N] [OUT]}"
N="${2:-10000}"
OUT="${3:-/dev/stdout}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="$ROOT/target/release/kiln"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

for load in bulk seq; do
    fp="$WORK/fp-$load"
    (cd "$JS" && node bench.mjs fireproof alldocs "$N" "$fp" --load="$load" --timeout-s=3600) \
        | grep '^{' | tail -1 >>"$OUT"
    store="$WORK/kiln-$load"
    start=$(date +%s%N)
    summary=$("$KILN" --root "$store" --json import-fireproof "$fp" --ledger bench --into bench)
    end=$(date +%s%N)
    bytes=$(du -sb "$fp/fp" | cut -f1)
    python3 - "$load" "$N" "$start" "$end" "$bytes" "$summary" >>"$OUT" <<'PY'
import json, sys
load, n, start, end, fp_bytes, summary = sys.argv[1:]
r = json.loads(summary)
ms = (int(end) - int(start)) / 1e6
print(json.dumps({
    "system": "kiln", "workload": "import-fireproof", "load_mode": load, "n": int(n),
    "import_ms": round(ms, 1),
    "docs_per_s": round(r["documents"] / (ms / 1e3)),
    "fireproof_bytes": int(fp_bytes),
    "mb_per_s": round(int(fp_bytes) / 1e6 / (ms / 1e3), 2),
    "documents": r["documents"], "events": r["events"], "kiln_events": r["kiln_events"],
    "hollow_versions": r["hollow_versions"], "files_read": r["files_read"],
    "bytes_read": r["bytes_read"],
}))
PY
done
