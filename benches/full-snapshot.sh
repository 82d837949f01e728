#!/usr/bin/env bash
# A first snapshot of IMAGE into three fresh directory regions (the image read into the page
# cache first), then its restore with the page cache dropped (needs root for drop_caches),
# checked byte for byte. Prints wall, user and system time and peak RSS (KiB) of each.
#
# Usage: benches/full-snapshot.sh GEOSNAP_BINARY IMAGE [WORK_DIR]
# Alternate two binaries run by run to compare them; this machine's timings drift by the hour.
set -euo pipefail
if (($# < 2)); then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
bin=$1
image=$2
work=${3:-${TMPDIR:-/tmp}/geosnap-full-snapshot}
rm -rf "$work"
mkdir -p "$work"
export GEOSNAP_DIR=$work/data
"$bin" init >/dev/null
"$bin" instance create vm --image "$image" >/dev/null
cat "$image" >/dev/null
/usr/bin/time -f "snapshot %e s wall, %U s user, %S s sys, %M KiB" \
    "$bin" snapshot take vm --name s >/dev/null
sync
echo 3 >/proc/sys/vm/drop_caches || echo "(page cache not dropped: not root)"
/usr/bin/time -f "restore  %e s wall, %U s user, %S s sys, %M KiB" \
    "$bin" restore vm/s --to "$work/restored.img" >/dev/null
cmp -s "$image" "$work/restored.img" && echo "restore identical" || echo "restore DIFFERS"
rm -rf "$work"
