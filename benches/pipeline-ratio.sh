#!/usr/bin/env bash
# The engine's criterion pipeline (default chunker, 512 MiB mixed image, in-memory store)
# against the ceiling its own single-core stage benches imply on two cores; each run
# measures the stages and the pipeline afresh, and the last line gives the median ratio.
#
#   benches/pipeline-ratio.sh [RUNS]     (default 3; about a minute per run)
#
# Ceiling per GiB of the mixed image (about 35 % random, 35 % text-like, 30 % zeros):
# read everything, check everything for zeros, SHA-256 the 70 % that is data (16 KiB
# chunks), zstd-1 the 35 % that is text and the 35 % that is random (which zstd gives up
# on quickly), in 256 KiB frames of 16 KiB chunks. Two cores share that work.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo bench --bench engine --no-run >/dev/null 2>&1
filter='^(zero/is_zero/8MiB|read/image/8MiB-windows|sha256/16384|zstd/encode/(text|random)/level1|pipeline/snapshot/mixed-512MiB/fixed:16K)$'
ratios=()
for i in $(seq "$runs"); do
    cargo bench --bench engine -- --warm-up-time 1 --measurement-time 4 "$filter" >/dev/null 2>&1
    line=$(python3 - <<'EOF'
import json, os
root = "target/criterion"
def rate(d):  # GiB/s from criterion's median
    est = json.load(open(os.path.join(root, d, "new/estimates.json")))["median"]["point_estimate"]
    size = json.load(open(os.path.join(root, d, "new/benchmark.json")))["throughput"]["Bytes"]
    return size / (est / 1e9) / 2**30
r = {k: rate(d) for k, d in {
    "zero": "zero/is_zero_8MiB", "read": "read/image_8MiB-windows", "sha": "sha256/16384",
    "text": "zstd/encode_text_level1", "random": "zstd/encode_random_level1",
    "pipe": "pipeline/snapshot_mixed-512MiB_fixed_16K"}.items()}
core_s = 1/r["read"] + 1/r["zero"] + 0.70/r["sha"] + 0.35/r["text"] + 0.35/r["random"]
ceiling = 2 / core_s
print(f"read {r['read']:.1f}, zero {r['zero']:.1f}, sha256/16K {r['sha']:.3f}, zstd-1 text {r['text']:.3f}, "
      f"random {r['random']:.2f} GiB/s -> {core_s:.3f} core-s/GiB, ceiling {ceiling:.3f} GiB/s; "
      f"pipeline {r['pipe']:.3f} GiB/s = {100*r['pipe']/ceiling:.1f} %")
EOF
)
    echo "run $i: $line"
    ratios+=("${line##*= }")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print "median ratio: " a[int((NR+1)/2)] " %"}'
