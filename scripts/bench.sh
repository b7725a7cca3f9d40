#!/usr/bin/env bash
# Runs every benchmark on release builds and writes target/bench/summary.json: one flat
# JSON object of named figures (BENCHMARKS.md explains each). Baselines run in the same
# invocation as what they are compared with, on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench
mkdir -p "$OUT"
cargo build --release -p twinlink-link -p twinctl --bins >&2
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
COUNT=${BENCH_ROUNDS:-3000}

# Raw Zenoh ping-pong of the sealed summary's size, two processes (baseline).
P=$(port)
"$BIN/twinlink-zping" --pong --listen "tcp/127.0.0.1:$P" 2>"$WORK/pong.log" & PIDS+=($!)
"$BIN/twinlink-zping" --connect "tcp/127.0.0.1:$P" --count "$COUNT" >"$WORK/zping.json"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# Link round trip: 50-object summary up, one recommendation down, sealed, two processes.
"$BIN/twinctl" provision bench --out "$WORK/keys" >/dev/null
P=$(port)
"$BIN/twinlink-dr" --vehicle bench --keys "$WORK/keys/bench.dr.key" --listen "tcp/127.0.0.1:$P" 2>"$WORK/dr.log" & PIDS+=($!)
"$BIN/twinlink-pe" --vehicle bench --keys "$WORK/keys/bench.pe.key" --connect "tcp/127.0.0.1:$P" \
  --rtt --objects 50 --count "$COUNT" 2>"$WORK/pe.log" >"$WORK/link.json"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# Raw Zenoh again after the link, so that drift of the machine shows.
P=$(port)
"$BIN/twinlink-zping" --pong --listen "tcp/127.0.0.1:$P" 2>"$WORK/pong2.log" & PIDS+=($!)
"$BIN/twinlink-zping" --connect "tcp/127.0.0.1:$P" --count "$COUNT" >"$WORK/zping2.json"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# Freshness of the DR's view over a 64 kbit/s path: adaptive, the AIMD reference, fixed.
for mode in adaptive aimd fixed; do
  "$BIN/twinlink-freshness" --mode "$mode" --seconds "${BENCH_FRESHNESS_SECONDS:-20}" >"$WORK/fresh_$mode.json"
done

# DR ingest on one core.
PIN=""; command -v taskset >/dev/null && PIN="taskset -c 0"
$PIN "$BIN/twinlink-ingest-bench" --objects 50 >"$WORK/ingest.json"

python3 - "$OUT/summary.json" "$WORK" <<'PY'
import json, os, sys
out, work = sys.argv[1], sys.argv[2]
load = lambda n: json.load(open(os.path.join(work, n)))
z1, z2, link, ingest = load("zping.json"), load("zping2.json"), load("link.json"), load("ingest.json")
fresh = {m: load(f"fresh_{m}.json") for m in ("adaptive", "aimd", "fixed")}
summary = json.load(open(out)) if os.path.exists(out) else {}
raw = sorted([z1["rtt_median_us"], z2["rtt_median_us"]])
summary.update({
    "link_rtt_median_us": link["rtt_median_us"],
    "link_rtt_p99_us": link["rtt_p99_us"],
    "link_rtt_max_us": link["rtt_max_us"],
    "zenoh_raw_rtt_median_us": z1["rtt_median_us"],
    "zenoh_raw_rtt_median_after_us": z2["rtt_median_us"],
    "zenoh_raw_rtt_p99_us": z1["rtt_p99_us"],
    "zenoh_raw_payload_bytes": z1["payload_bytes"],
    "link_rtt_over_raw": round(link["rtt_median_us"] / max(1, z1["rtt_median_us"]), 3),
    "link_ingest_per_core": ingest["summaries_per_s_median"],
    "freshness_64k_adaptive_median_ms": fresh["adaptive"]["median_ms_second_half"],
    "freshness_64k_adaptive_max_ms": fresh["adaptive"]["max_ms_second_half"],
    "freshness_64k_aimd_median_ms": fresh["aimd"]["median_ms_second_half"],
    "freshness_64k_aimd_max_ms": fresh["aimd"]["max_ms_second_half"],
    "freshness_64k_fixed_median_ms": fresh["fixed"]["median_ms_second_half"],
    "freshness_64k_fixed_end_ms": fresh["fixed"]["end_ms"],
})
json.dump(summary, open(out, "w"), indent=2, sort_keys=True)
print(json.dumps(summary, indent=2, sort_keys=True))
PY
