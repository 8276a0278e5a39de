#!/usr/bin/env bash
# Import throughput from Fireproof, beside Fireproof's own open-and-read-all, in one run.
#
#   scripts/bench-import-fireproof.sh JS_HARNESS [N] [OUT] [MODES]
#
# JS_HARNESS is a writable copy of the shared benchmark harness (../shared/bench) with
# `npm ci` done (it has @fireproof/core 0.24.19 and the harness's documents). For each load
# mode (`bulk`: bulks of 1,000; `seq`: one put per document, one commit each), an N-document
# ledger is written with Fireproof by scripts/fireproof-ledger.mjs (laid out as the harness's
# adapter does; sequential writes wait out each auto-compaction, which otherwise loses writes:
# the harness's own `put-seq` load of 10,000 stalls on a CAR its compaction deleted); then, in
# fresh processes, Fireproof opens it and reads every document (the harness's `alldocs`), and
# `kiln import-fireproof` imports it into a fresh store, timed as a whole command. Prints one
# JSON line per mode to OUT (default stdout). Needs: cargo build --release -p kiln-cli.
set -euo pipefail

JS="${1:?usage: $0 JS_HARNESS [N] [OUT]}"
N="${2:-10000}"
OUT="${3:-/dev/stdout}"
MODES="${4:-bulk seq}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="$ROOT/target/release/kiln"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

for load in $MODES; do
    fp="$WORK/fp-$load"
    w=$(cd "$JS" && node "$ROOT/scripts/fireproof-ledger.mjs" write "$load" "$N" "$fp" | grep '^{' | tail -1)
    r=$(cd "$JS" && node "$ROOT/scripts/fireproof-ledger.mjs" read "$N" "$fp" | grep '^{' | tail -1)
    store="$WORK/kiln-$load"
    start=$(date +%s%N)
    summary=$("$KILN" --root "$store" --json import-fireproof "$fp" --ledger bench --into bench)
    end=$(date +%s%N)
    bytes=$(du -sb "$fp/fp" | cut -f1)
    python3 - "$load" "$N" "$start" "$end" "$bytes" "$summary" "$w" "$r" >>"$OUT" <<'PY'
import json, sys
load, n, start, end, fp_bytes, summary, w, r = sys.argv[1:]
r_kiln, w, r = json.loads(summary), json.loads(w), json.loads(r)
ms = (int(end) - int(start)) / 1e6
print(json.dumps({
    "workload": "import-fireproof", "load_mode": load, "n": int(n),
    "fireproof_write_ms": round(w["write_ms"], 1),
    "fireproof_open_ms": round(r["open_ms"], 1),
    "fireproof_alldocs_ms": round(r["alldocs_ms"], 1),
    "fireproof_open_read_ms": round(r["open_ms"] + r["alldocs_ms"], 1),
    "kiln_import_ms": round(ms, 1),
    "kiln_docs_per_s": round(r_kiln["documents"] / (ms / 1e3)),
    "fireproof_bytes": int(fp_bytes),
    "kiln_mb_per_s": round(int(fp_bytes) / 1e6 / (ms / 1e3), 2),
    "documents": r_kiln["documents"], "events": r_kiln["events"],
    "kiln_events": r_kiln["kiln_events"], "hollow_versions": r_kiln["hollow_versions"],
    "files_read": r_kiln["files_read"], "bytes_read": r_kiln["bytes_read"],
}))
PY
done
