#!/usr/bin/env bash
# Swift-backed against local-directory regions on one loopback Swift (scripts/swift-aio.sh):
# a 1 GiB mixed image snapshotted and restored from de-1, three times each, then the plain
# GET loop (examples/s3_get_loop) on the same server. Needs a release build of geosnap and of
# the example: cargo build --release && cargo build --release -p geosnap-replication --example s3_get_loop
set -euo pipefail
cd "$(dirname "$0")/.."
D=${SWIFT_BENCH_DIR:-$PWD/target/swift-bench}
G=$PWD/target/release/geosnap
rm -rf "$D"; mkdir -p "$D"
scripts/swift-aio.sh start "$D/swift"
trap 'scripts/swift-aio.sh stop "$D/swift" || true' EXIT
eval "$(scripts/swift-aio.sh env "$D/swift")"
"$G" gen-image "$D/m.img" --size 1G --profile mixed >/dev/null
cat "$D/m.img" >/dev/null
echo "image: $(du -h --apparent-size "$D/m.img" | cut -f1) logical, $(du -h "$D/m.img" | cut -f1) allocated"
T='%e s wall, %U user, %S sys, %M KB peak RSS'
for kind in local swift; do
  for rep in 1 2 3; do
    dd="$D/$kind-$rep"
    "$G" -q --data-dir "$dd" init
    if [[ $kind = swift ]]; then
      # Fresh buckets per repetition.
      for r in it-1 de-1 nl-1; do
        scripts/swift-aio.sh s3 "$D/swift" PUT /g$rep-$r >/dev/null
        scripts/swift-aio.sh s3 "$D/swift" PUT /g$rep-vol-$r >/dev/null
      done
      python3 - "$dd/config.toml" "$rep" <<'PY'
import re, sys
p, rep = sys.argv[1], sys.argv[2]
s = open(p).read()
out = []
for block in s.split("[[region]]"):
    m = re.search(r'name = "([^"]+)"', block)
    if not m:
        out.append(block); continue
    n = m.group(1)
    block = re.sub(r'url = "file://[^"]*regions/[^"]*"', f'url = "s3://g{rep}-{n}"', block)
    block = re.sub(r'volume_url = "file://[^"]*"', f'volume_url = "s3://g{rep}-vol-{n}"', block)
    block = block.rstrip("\n") + '\n\n[region.options]\nendpoint = "http://127.0.0.1:8080"\naccess_key_id = "test:tester"\nsecret_access_key_env = "GEOSNAP_S3_SECRET_ACCESS_KEY"\nconditional_put = "disabled"\n\n'
    out.append(block)
open(p, "w").write("[[region]]".join(out))
PY
    fi
    "$G" -q --data-dir "$dd" instance create vm --image "$D/m.img"
    sync
    /usr/bin/time -f "$kind rep $rep snapshot: $T" "$G" -q --data-dir "$dd" snapshot take vm --name s1
    rm -f "$D/r.img"; sync
    /usr/bin/time -f "$kind rep $rep restore from de-1: $T" "$G" -q --data-dir "$dd" restore vm/s1 --to "$D/r.img" --region de-1
    cmp "$D/r.img" "$D/m.img" && echo "$kind rep $rep: restore byte-identical"
    rm -f "$D/r.img"
    [[ $kind = swift ]] && "$G" --data-dir "$dd" region list | head -5
    [[ $kind = local ]] && rm -rf "$dd"
    true
  done
done
echo "GET loop (4 MiB objects, concurrency 1 8 16 32):"
target/release/examples/s3_get_loop 64 4096 1 8 16 32
echo "GET loop (1 MiB objects, concurrency 8 32):"
target/release/examples/s3_get_loop 256 1024 8 32
