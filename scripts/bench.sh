#!/usr/bin/env bash
# Runs every benchmark on release builds and writes target/bench/summary.json: one flat
# JSON object of named figures (BENCHMARKS.md explains each). Baselines run in the same
# invocation as what they are compared with, on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench
mkdir -p "$OUT"
cargo build --release -p twinlink-link -p twinctl -p twinlink-vehicle -p twin_link_node -p twin_dr_host --bins >&2
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
COUNT=${BENCH_ROUNDS:-2000}

# Round trips, interleaved so that both see the same machine: raw Zenoh ping-pong of the
# sealed summary's size (baseline), then the link (a 50-object summary up, one
# recommendation down, sealed, PE and DR in separate processes), three times each.
"$BIN/twinctl" provision bench --out "$WORK/keys" >/dev/null
for round in 1 2 3; do
  P=$(port)
  "$BIN/twinlink-zping" --pong --listen "tcp/127.0.0.1:$P" 2>"$WORK/pong.log" & PIDS+=($!)
  "$BIN/twinlink-zping" --connect "tcp/127.0.0.1:$P" --count "$COUNT" >"$WORK/zping_$round.json"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  P=$(port)
  "$BIN/twinlink-dr" --vehicle bench --keys "$WORK/keys/bench.dr.key" --listen "tcp/127.0.0.1:$P" 2>"$WORK/dr.log" & PIDS+=($!)
  "$BIN/twinlink-pe" --vehicle bench --keys "$WORK/keys/bench.pe.key" --connect "tcp/127.0.0.1:$P" \
    --rtt --objects 50 --count "$COUNT" 2>"$WORK/pe.log" >"$WORK/link_$round.json"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
done

# Freshness of the DR's view over a 64 kbit/s path: adaptive, the AIMD reference, fixed.
for mode in adaptive aimd fixed; do
  "$BIN/twinlink-freshness" --mode "$mode" --seconds "${BENCH_FRESHNESS_SECONDS:-20}" >"$WORK/fresh_$mode.json"
done

# Bandwidth prediction error on the evaluation drive, against persistence.
"$BIN/twinlink-predict-eval" --ahead-s 5 >"$WORK/predict.json"

# Bandwidth prediction against the link's own measurements on a drive through varying
# coverage (the first lap teaches the map).
"$BIN/twinlink-drive" --laps 3 --ahead-s 2 >"$WORK/drive.json"

# DR ingest on one core.
PIN=""; command -v taskset >/dev/null && PIN="taskset -c 0"
$PIN "$BIN/twinlink-ingest-bench" --objects 50 >"$WORK/ingest.json"

# LiDAR summarizer: a 120,000-point cloud on one core, three runs of 60 frames.
for round in 1 2 3; do
  $PIN "$BIN/twinlink-lidar-bench" --points 120000 --runs 60 >"$WORK/lidar_$round.json"
done

# Vehicle-added latency: odometry and summaries from an rclpy publisher (20 Hz each) through
# twin_link_node to its DR; the node's link measures each message from its arrival from ROS
# to the hand-over of its encrypted frame to Zenoh. Baseline in the same run: the same link
# without ROS (twinlink-pe streaming summaries of 3 objects at 20 Hz).
P=$(port)
"$BIN/twinlink-dr" --vehicle bench --keys "$WORK/keys/bench.dr.key" --listen "tcp/127.0.0.1:$P" 2>"$WORK/dr.log" & PIDS+=($!)
"$BIN/twinlink-pe" --vehicle bench --keys "$WORK/keys/bench.pe.key" --connect "tcp/127.0.0.1:$P" \
  --objects 3 --rate-hz 20 --count 200 2>"$WORK/pe_stream.log" >"$WORK/pe_stream.json"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
P=$(port)
"$BIN/twinlink-dr" --vehicle bench --keys "$WORK/keys/bench.dr.key" --listen "tcp/127.0.0.1:$P" 2>"$WORK/dr.log" & PIDS+=($!)
export ROS_DOMAIN_ID=$(( 100 + $$ % 100 ))
"$BIN/twin_link_node" --ros-args -r __ns:=/bench -p vehicle_id:=bench -p key_file:="$WORK/keys/bench.pe.key" \
  -p zenoh_connect:="tcp/127.0.0.1:$P" -p report_file:="$WORK/link_node.json" 2>"$WORK/link_node.log" & NODE=$!; PIDS+=($NODE)
"$TWINLINK_PYTHON" tests/peers/vehicle_peer.py link --namespace /bench --seconds "${BENCH_LATENCY_SECONDS:-10}" >"$WORK/peer_link.json"
kill -INT "$NODE"; wait "$NODE" 2>/dev/null || true
kill "${PIDS[-2]}"; wait "${PIDS[-2]}" 2>/dev/null || true

# DR host, ingest: one thread pinned to one core, 50-object summaries through the link,
# fusion and planning with the ONNX speed advisor (the link alone is the baseline, same run).
MODEL=models/speed_advisor/speed_advisor.onnx
MODEL_ARG=(); [ -f "$MODEL" ] && MODEL_ARG=(--model "$MODEL")
$PIN "$BIN/twin-dr-ingest-bench" --objects 50 --frames 20000 --runs 5 "${MODEL_ARG[@]}" >"$WORK/dr_ingest.json"

# DR host, fleet: 2,000 active twins at 10 Hz and 50,000 idle ones on one host; the load
# comes from another process, starts once every link is up (the time that took is
# reported) and is measured after a warm-up. Memory per idle twin: the host's resident set with the whole
# fleet provisioned (nobody connected) minus the same host with no twin, divided by the
# number of twins.
FLEET_ACTIVE=${BENCH_FLEET_ACTIVE:-2000}; FLEET_IDLE=${BENCH_FLEET_IDLE:-50000}
FLEET_TOTAL=$(( FLEET_ACTIVE + FLEET_IDLE ))
"$BIN/twin-dr-fleet-bench" provision --active "$FLEET_ACTIVE" --idle "$FLEET_IDLE" --dir "$WORK/fleet" >/dev/null
mkdir -p "$WORK/no_keys"
rss_of() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
metrics() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=5).read().decode())' "$1" 2>/dev/null || true; }
# Waits (at most 5 minutes) until the host at $1 reports $2 twins.
wait_provisioned() {
  for _ in $(seq 600); do metrics "$1" | grep -q "^twinlink_dr_provisioned $2\$" && return 0; sleep 0.5; done
  echo "the DR host at $1 never reported $2 twins" >&2; return 1
}
P=$(port); A=127.0.0.1:$(port)
"$BIN/twin-dr-host" --keys "$WORK/no_keys" --data-dir "$WORK/no_data" --listen "tcp/127.0.0.1:$P" --admin "$A" 2>"$WORK/host_empty.log" & PIDS+=($!)
wait_provisioned "$A" 0
sleep 2; RSS_EMPTY=$(rss_of "${PIDS[-1]}")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
P=$(port); A=127.0.0.1:$(port)
"$BIN/twin-dr-host" --keys "$WORK/fleet/keys" --data-dir "$WORK/fleet/data" --listen "tcp/127.0.0.1:$P" --admin "$A" 2>"$WORK/host_fleet.log" & HOST=$!; PIDS+=($HOST)
wait_provisioned "$A" "$FLEET_TOTAL"
sleep 2; RSS_IDLE=$(rss_of "$HOST")
"$BIN/twin-dr-fleet-bench" load --dir "$WORK/fleet" --connect "tcp/127.0.0.1:$P" --rate-hz 10 --objects 10 \
  --warmup-s "${BENCH_FLEET_WARMUP_S:-10}" --seconds "${BENCH_FLEET_SECONDS:-30}" >"$WORK/fleet.json" 2>"$WORK/fleet_load.log"
metrics "$A" >"$WORK/fleet_metrics.txt"
RSS_LOADED=$(rss_of "$HOST")
kill "$HOST"; wait "$HOST" 2>/dev/null || true
echo "{\"rss_empty\": $RSS_EMPTY, \"rss_idle\": $RSS_IDLE, \"rss_loaded\": $RSS_LOADED, \"twins\": $FLEET_TOTAL, \"active\": $FLEET_ACTIVE}" >"$WORK/fleet_mem.json"

# Inter-twin relay: two DR hosts behind one Zenoh router, veh-2's twin on one, veh-1's on
# the other; veh-2 reports 300 hazards at 10 Hz; each from its first disclosure by veh-2's
# twin (its audit log) to its arrival at veh-1 over veh-1's link.
"$BIN/twinctl" fleet init bench-fleet --out "$WORK/fleet_id" >/dev/null
for h in a b; do
  "$BIN/twinctl" fleet certify-host "host-$h" --authority "$WORK/fleet_id/bench-fleet.authority.key" --days 1 --out "$WORK/fleet_id" >/dev/null
  mkdir -p "$WORK/relay_$h/keys"
done
"$BIN/twinctl" provision veh-1 --out "$WORK/relay_keys" >/dev/null
"$BIN/twinctl" provision veh-2 --out "$WORK/relay_keys" >/dev/null
cp "$WORK/relay_keys/veh-2.dr.key" "$WORK/relay_a/keys/"; cp "$WORK/relay_keys/veh-1.dr.key" "$WORK/relay_b/keys/"
R=$(port)
"$BIN/twinlink-router" --listen "tcp/127.0.0.1:$R" >/dev/null 2>"$WORK/router.log" & PIDS+=($!)
for h in a b; do
  "$BIN/twin-dr-host" --keys "$WORK/relay_$h/keys" --data-dir "$WORK/relay_$h/data" --mode client --connect "tcp/127.0.0.1:$R" \
    --admin off --issuer-key "$WORK/fleet_id/host-$h.issuer.key" --trust-anchor "$WORK/fleet_id/bench-fleet.authority.pub" 2>"$WORK/relay_host_$h.log" & PIDS+=($!)
done
"$BIN/twin-dr-relay-bench" --keys "$WORK/relay_keys" --discloser-audit "$WORK/relay_a/data/veh-2/audit.log" \
  --mode client --connect "tcp/127.0.0.1:$R" --hazards "${BENCH_RELAY_HAZARDS:-300}" >"$WORK/relay.json" 2>"$WORK/relay_bench.log"
for _ in 1 2 3; do kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; done

# Simulator, fast mode: bench_200 (about 200 vehicles, 73 with twins) without and with
# twins, three times; the realtime factor with twins and the uplink reduction.
cargo build --release -p twinlink-sim --example fast_run >&2
for round in 1 2 3; do
  target/release/examples/fast_run sim/scenarios/bench_200.yaml >"$WORK/sim_fast_$round.jsonl"
done

# The real-time demo as `make demo` runs it (every component a process, debug build): raw
# sensor bytes the connected vehicles produced against what their links sent up.
cargo build --workspace --bins >&2
target/debug/twinlink-demo --out "$WORK/demo" >"$WORK/demo.log"

python3 - "$OUT/summary.json" "$WORK" <<'PY'
import json, os, sys
out, work = sys.argv[1], sys.argv[2]
load = lambda n: json.load(open(os.path.join(work, n)))
import statistics
zs = [load(f"zping_{r}.json") for r in (1, 2, 3)]
links = [load(f"link_{r}.json") for r in (1, 2, 3)]
ingest = load("ingest.json")
med = lambda runs, key: statistics.median(r[key] for r in runs)
fresh = {m: load(f"fresh_{m}.json") for m in ("adaptive", "aimd", "fixed")}
predict = load("predict.json")
drive = load("drive.json")
lidar = [load(f"lidar_{r}.json") for r in (1, 2, 3)]
node = load("link_node.json")
pe_stream = load("pe_stream.json")
dr_ingest = load("dr_ingest.json")
fleet = load("fleet.json")
mem = load("fleet_mem.json")
relay = load("relay.json")
# The host's own latency histogram (summary in -> recommendation handed to the link).
buckets = []
for line in open(os.path.join(work, "fleet_metrics.txt")):
    if line.startswith("twinlink_dr_latency_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
def hist_quantile(q):
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return None
summary = {}
demo = load("demo/report.json")["comms"]
summary.update({
    "uplink_reduction_factor": round(demo["uplink_reduction_factor"], 1),
    "demo_raw_sensor_bytes": demo["raw_sensor_bytes"],
    "demo_uplink_bytes": demo["uplink_bytes"],
})
sim_runs = [[json.loads(l) for l in open(os.path.join(work, f"sim_fast_{r}.jsonl"))] for r in (1, 2, 3)]
sim_on = [next(x for x in run if x["twins"]) for run in sim_runs]
sim_off = [next(x for x in run if not x["twins"]) for run in sim_runs]
summary.update({
    "sim_fast_realtime_factor_200": round(med(sim_on, "realtime_factor"), 1),
    "sim_fast_realtime_factor_200_without_twins": round(med(sim_off, "realtime_factor"), 1),
    "sim_fast_twins_200": sim_on[0]["twinned"],
    "sim_fast_uplink_reduction_factor": round(sim_on[0]["uplink_reduction_factor"], 1),
})
summary.update({
    "relay_latency_p99_ms": round(relay["relay_latency_p99_ms"], 2),
    "relay_latency_p50_ms": round(relay["relay_latency_p50_ms"], 2),
    "relay_latency_max_ms": round(relay["relay_latency_max_ms"], 2),
    "relay_hazards_delivered": relay["delivered"],
})
summary.update({
    "dr_ingest_per_core": dr_ingest["dr_ingest_per_core"],
    "dr_ingest_link_only_per_core": dr_ingest["link_only_ingest_per_core"],
    "dr_ingest_objects": dr_ingest["objects"],
    "dr_ingest_model": dr_ingest["model"],
    "dr_idle_bytes": round((mem["rss_idle"] - mem["rss_empty"]) / mem["twins"]),
    "dr_idle_twins": mem["twins"],
    "dr_host_rss_empty_bytes": mem["rss_empty"],
    "dr_host_rss_idle_fleet_bytes": mem["rss_idle"],
    "dr_host_rss_loaded_bytes": mem["rss_loaded"],
    "dr_fleet_p99_ms": fleet["latency_p99_ms"],
    "dr_fleet_p50_ms": fleet["latency_p50_ms"],
    "dr_fleet_max_ms": fleet["latency_max_ms"],
    "dr_fleet_active": fleet["links_up"],
    "dr_fleet_links_up_s": fleet.get("links_up_s"),
    "dr_fleet_summaries": fleet["summaries"],
    "dr_fleet_recommendations": fleet["recommendations"],
    "dr_fleet_host_p99_ms_upper_bound": None if hist_quantile(0.99) is None else hist_quantile(0.99) * 1e3,
})
summary.update({
    "lidar_summarize_ms": round(med(lidar, "lidar_summarize_ms"), 3),
    "lidar_summarize_p90_ms": round(med(lidar, "lidar_summarize_p90_ms"), 3),
    "lidar_points": lidar[0]["points"],
    "vehicle_added_latency_us": node["link"]["egress"]["p50_us"],
    "vehicle_added_latency_p99_us": node["link"]["egress"]["p99_us"],
    "vehicle_added_latency_messages": node["link"]["egress"]["messages"],
    "link_only_egress_us": pe_stream["link"]["egress"]["p50_us"],
    "link_only_egress_p99_us": pe_stream["link"]["egress"]["p99_us"],

    "link_rtt_median_us": med(links, "rtt_median_us"),
    "link_rtt_p99_us": med(links, "rtt_p99_us"),
    "link_rtt_max_us": max(r["rtt_max_us"] for r in links),
    "zenoh_raw_rtt_median_us": med(zs, "rtt_median_us"),
    "zenoh_raw_rtt_p99_us": med(zs, "rtt_p99_us"),
    "zenoh_raw_payload_bytes": zs[0]["payload_bytes"],
    "link_rtt_over_raw": round(statistics.median(l["rtt_median_us"] / max(1, z["rtt_median_us"]) for l, z in zip(links, zs)), 3),
    "link_ingest_per_core": ingest["summaries_per_s_median"],
    "freshness_64k_adaptive_median_ms": fresh["adaptive"]["median_ms_second_half"],
    "freshness_64k_adaptive_max_ms": fresh["adaptive"]["max_ms_second_half"],
    "freshness_64k_aimd_median_ms": fresh["aimd"]["median_ms_second_half"],
    "freshness_64k_aimd_max_ms": fresh["aimd"]["max_ms_second_half"],
    "freshness_64k_fixed_median_ms": fresh["fixed"]["median_ms_second_half"],
    "freshness_64k_fixed_end_ms": fresh["fixed"]["end_ms"],
    "bandwidth_prediction_5s_median_rel_error": round(predict["median_relative_error"], 3),
    "bandwidth_persistence_5s_median_rel_error": round(predict["persistence_median_relative_error"], 3),
    "bandwidth_prediction_5s_mean_rel_error": round(predict["mean_relative_error"], 3),
    "bandwidth_persistence_5s_mean_rel_error": round(predict["persistence_mean_relative_error"], 3),
    "bandwidth_link_drive_2s_median_rel_error": round(drive["prediction_median_rel_error"], 3),
    "bandwidth_link_drive_persistence_2s_median_rel_error": round(drive["persistence_median_rel_error"], 3),
})
json.dump(summary, open(out, "w"), indent=2, sort_keys=True)
print(json.dumps(summary, indent=2, sort_keys=True))
PY
