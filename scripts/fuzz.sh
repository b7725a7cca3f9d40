#!/usr/bin/env bash
# Fuzzes the CDR decoder of every message type for N seconds (default 60) with cargo fuzz
# (libFuzzer + AddressSanitizer). cargo fuzz needs nightly-only compiler flags; on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them for this build only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
cd "$root/fuzz"
mkdir -p corpus/decode
# Seed the corpus with valid encodings of every message type.
(cd "$root" && cargo run -q -p twinlink-launch --bin twinlink-fuzz-seeds -- "$root/fuzz/corpus/decode")
RUSTC_BOOTSTRAP=1 cargo fuzz run decode corpus/decode -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536
