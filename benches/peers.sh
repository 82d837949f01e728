#!/usr/bin/env bash
# shellcheck disable=SC2317
# (SC2317: the per-tool functions below are only called indirectly, as "${tool}_backup".)
#
# Peer comparison harness (issue 7, "Peer comparison harness").
#
# Measures geosnap against restic, borg, casync (and rustic when asked) on the same disk
# images, in the same run, on this machine:
#   - full snapshot of a 2 GiB sparse ext4 image into an empty repository,
#   - incremental snapshot of a copy of it with 1 % of its data blocks rewritten in place,
#     into the same repository (what matters: wall time and the stored bytes it adds),
#   - restore of that second snapshot (byte-identical? sparse?),
#   - full snapshot and restore of a 1 GiB dense image (half random, half text) in a
#     fresh repository,
# each tool at its defaults and in its disk-image tuning. Every figure is the median of 3
# repetitions (1 with --quick), each repetition in a fresh repository. Prints one markdown
# table and writes it to $WORK/peers-table.md.
#
# Usage: benches/peers.sh [--quick] [--only geosnap,borg,...] [--with-rustic] [--help]
# Environment: PEERS_WORK (work dir, default /work/peers-work, ~10 GB free needed),
#              GEOSNAP (geosnap binary; default: `cargo build --release` in this repo),
#              PEERS_TIMEOUT (seconds before one measured command counts as hung, 600).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: benches/peers.sh [OPTIONS]

Compare geosnap with restic, borg, casync (and rustic) on the same disk images:
full snapshot, incremental after a 1 % scattered rewrite, restore; plus full + restore
of a dense 1 GiB image. Medians of 3 runs; one markdown table on stdout and in
$PEERS_WORK/peers-table.md.

Options:
  --quick           one repetition instead of three
  --only LIST       comma-separated subset of: geosnap,borg,restic,casync,rustic
  --with-rustic     include rustic (installs it with `cargo install rustic-rs --locked`
                    when missing, about 20 minutes); skipped otherwise
  --keep            keep the repositories of the last repetition (in $PEERS_WORK/runs)
  -h, --help        this help

Environment:
  PEERS_WORK        work directory (default /work/peers-work); needs ~10 GB free and
                    should be on ext4. Images are cached there between runs.
  GEOSNAP           geosnap binary to use (default: build with `cargo build --release`)
  PEERS_TIMEOUT     seconds after which one measured command is killed and counted as
                    failed (default 600)

Needs root (or sudo-less apt) to install restic, borgbackup, casync from Debian's packages.
EOF
}

# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------
ARGS="$*"
ALL_TOOLS="geosnap,borg,restic,casync,rustic"
REPS=3
ONLY=""
WITH_RUSTIC=0
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) REPS=1 ;;
    --only) [[ $# -ge 2 ]] || { echo "peers.sh: --only needs a list" >&2; exit 2; }
            ONLY="$2"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    --with-rustic) WITH_RUSTIC=1 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "peers.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$ONLY" ]] || ONLY="$ALL_TOOLS"
IFS=',' read -r -a TOOLS <<<"$ONLY"
for t in "${TOOLS[@]}"; do
  case ",$ALL_TOOLS," in *",$t,"*) ;; *) echo "peers.sh: unknown tool '$t' in --only (known: $ALL_TOOLS)" >&2; exit 2 ;; esac
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
die() { echo "peers.sh: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
WORK=${PEERS_WORK:-/work/peers-work}
TIMEOUT=${PEERS_TIMEOUT:-600}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
IMAGES="$WORK/images"      # cached between runs
RUNS="$WORK/runs"          # repositories, restores, caches of the current measurement
LOGS="$WORK/logs"          # stdout/stderr and /usr/bin/time output of every measured command
RESULTS="$WORK/results.tsv"
META="$WORK/meta.txt"
TABLE="$WORK/peers-table.md"
export PATH="$HOME/.cargo/bin:$PATH"
START_TS=$(date +%s)

# ---------------------------------------------------------------------------------------
# 1. Tools: geosnap (built here unless GEOSNAP is given), peers from Debian's packages,
#    rustic from crates.io only with --with-rustic.
# ---------------------------------------------------------------------------------------
GEOSNAP_FROM="GEOSNAP=${GEOSNAP:-}"
if [[ -z "${GEOSNAP:-}" ]]; then
  GEOSNAP_FROM="built from $(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo 'this tree')"
  say "building geosnap (cargo build --release)"
  (cd "$REPO_DIR" && cargo build --release >&2)
  GEOSNAP="${CARGO_TARGET_DIR:-target}/release/geosnap"
  [[ "$GEOSNAP" = /* ]] || GEOSNAP="$REPO_DIR/$GEOSNAP"
fi
[[ -x "$GEOSNAP" ]] || die "geosnap binary '$GEOSNAP' not found or not executable"

APT_UPDATED=0
apt_install() { # apt_install PKG...: install from Debian's packages, updating the lists once if needed
  if ! apt-get install -y --no-install-recommends "$@" >&2; then
    if [[ $APT_UPDATED -eq 0 ]]; then
      APT_UPDATED=1
      apt-get update >&2 || true
      apt-get install -y --no-install-recommends "$@" >&2 || true
    fi
  fi
}
need_cmd() { # need_cmd CMD PKG: make sure CMD exists, installing PKG when it does not
  command -v "$1" >/dev/null 2>&1 && return 0
  say "installing $2 (for $1)"
  apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "'$1' is still missing after 'apt-get install $2'; install it and re-run"
}
need_cmd mke2fs e2fsprogs
[[ -x /usr/bin/time ]] || apt_install time
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is missing after 'apt-get install time'"
need_cmd python3 python3
want borg && need_cmd borg borgbackup
want restic && need_cmd restic restic
want casync && need_cmd casync casync
RUSTIC_NOTE=""
if want rustic; then
  if [[ $WITH_RUSTIC -eq 1 ]]; then
    if ! command -v rustic >/dev/null 2>&1; then
      say "installing rustic (cargo install rustic-rs --locked; about 20 minutes)"
      cargo install rustic-rs --locked >&2 || true
    fi
    command -v rustic >/dev/null 2>&1 || die "'rustic' is still missing after 'cargo install rustic-rs --locked'"
  else
    RUSTIC_NOTE="skipped: run with --with-rustic (cargo install rustic-rs --locked, ~20 min)"
    ONLY=",$ONLY,"; ONLY=${ONLY//,rustic,/,}; ONLY=${ONLY#,}; ONLY=${ONLY%,}
  fi
fi

# Versions for the table header.
versions() {
  echo "geosnap: $("$GEOSNAP" --version 2>&1 | head -n1) ($GEOSNAP_FROM)"
  want borg && echo "borg: $(borg --version 2>&1 | head -n1)"
  want restic && echo "restic: $(restic version 2>&1 | head -n1)"
  # shellcheck disable=SC2016  # ${Version} is dpkg-query's field, not a shell variable
  want casync && echo "casync: $(casync --version 2>&1 | head -n1) (Debian $(dpkg-query -W -f='${Version}' casync 2>/dev/null || echo '?'))"
  want rustic && echo "rustic: $(rustic --version 2>&1 | head -n1)"
  return 0
}

# restic 0.14 (bookworm) has no `restore --sparse`; use it when the installed version does.
RESTIC_SPARSE=()
if want restic && restic restore --help 2>/dev/null | grep -q -- '--sparse'; then RESTIC_SPARSE=(--sparse); fi

# ---------------------------------------------------------------------------------------
# 2. Images, made with geosnap's own seeded generator and cached in $IMAGES.
#    (a) 2 GiB sparse raw image with ext4 holding ~700 MiB of system files, 300 MiB of
#        random data and 200 MiB of generated logs (mke2fs -d);
#    (b) a copy of (a) with 1 % of its data blocks rewritten in place (scattered 4 KiB writes);
#    (c) 1 GiB dense image: first half random, second half log-like text.
# ---------------------------------------------------------------------------------------
IMG_A="$IMAGES/ext4-2g.img"
IMG_B="$IMAGES/ext4-2g-rewrite1pct.img"
IMG_C="$IMAGES/halves-1g.img"
mkdir -p "$IMAGES"

stage_system_files() { # stage_system_files DEST BUDGET_BYTES ROOT: copy regular files of ROOT (sorted) until BUDGET
  local dest=$1 budget=$2 root=$3 total=0 entry path size list
  list=$(mktemp "$WORK/filelist.XXXXXX")
  while IFS= read -r -d '' entry; do
    size=${entry##*$'\t'}
    path=${entry%$'\t'*}
    (( total + size > budget )) && continue       # keep filling with smaller files
    total=$((total + size))
    printf '%s\0' "$path" >>"$list"
    (( total >= budget - 65536 )) && break
  done < <(find "$root" -xdev -type f -readable -printf '%p\t%s\0' 2>/dev/null | sort -z)
  # -type f: regular files only (no devices, fifos, sockets, symlinks).
  tar --null --no-recursion -T "$list" -cf - 2>/dev/null | tar -xf - -C "$dest"
  rm -f "$list"
  echo "$total"
}

make_image_a() {
  local staging="$WORK/staging" tmp="$IMG_A.tmp" got=0 part
  say "generating image (a): 2 GiB ext4 with system files, random data and logs"
  rm -rf "$staging" "$tmp"
  mkdir -p "$staging/data" "$staging/var/log"
  # ~700 MiB of system files: binaries and libraries, then text and data.
  part=$(stage_system_files "$staging" $((380 * 1048576)) /usr/lib); got=$((got + part))
  part=$(stage_system_files "$staging" $((700 * 1048576 - got)) /usr/share); got=$((got + part))
  part=$(stage_system_files "$staging" $((700 * 1048576 - got)) /usr/bin); got=$((got + part))
  say "  staged $((got / 1048576)) MiB of system files"
  "$GEOSNAP" -q gen-image "$staging/data/random.bin" --size 300M --profile random --seed 101
  local i
  for i in 1 2 3 4; do
    "$GEOSNAP" -q gen-image "$staging/var/log/app$i.log" --size 50M --profile text --seed $((110 + i))
  done
  mke2fs -q -F -t ext4 -d "$staging" "$tmp" 2G
  rm -rf "$staging"
  mv "$tmp" "$IMG_A"
}
make_image_b() {
  say "generating image (b): copy of (a) with 1 % of its data blocks rewritten"
  rm -f "$IMG_B.tmp"
  cp --sparse=always "$IMG_A" "$IMG_B.tmp"
  "$GEOSNAP" gen-image "$IMG_B.tmp" --rewrite 0.01 --seed 201 | sed 's/ of .*//' | tee "$IMAGES/rewrite.txt" >&2
  mv "$IMG_B.tmp" "$IMG_B"
}
make_image_c() {
  say "generating image (c): 1 GiB dense, half random, half text"
  "$GEOSNAP" -q gen-image "$IMG_C.tmp" --size 1G --profile halves --seed 301
  mv "$IMG_C.tmp" "$IMG_C"
}
[[ -f "$IMG_A" ]] || make_image_a
[[ -f "$IMG_B" ]] || make_image_b
[[ -f "$IMG_C" ]] || make_image_c

size_of() { stat -c %s "$1"; }
alloc_of() { stat -c '%b %B' "$1" | awk '{ printf "%d\n", $1 * $2 }'; }
bytes_of() { du -sb "$1" | cut -f1; }

# ---------------------------------------------------------------------------------------
# 3. Measurement primitives
# ---------------------------------------------------------------------------------------
# run_timed LOG CMD...: runs CMD under GNU time, sets T_WALL T_USER T_SYS T_RSS
# (seconds, seconds, seconds, KiB) and T_SYNC (seconds a `sync` right after CMD takes: the
# write-back CMD left for the kernel, so wall + sync is the time until its output is on
# disk) and returns CMD's status. Its output goes to LOG.out. `sync` first so that
# write-back of the previous step does not land in this one. A command that runs longer
# than $PEERS_TIMEOUT seconds is killed (with its process group) and fails.
run_timed() {
  local log="$LOGS/$1" rc=0; shift
  sync
  : >"$log.time"
  timeout -k 10 "$TIMEOUT" /usr/bin/time -f '%e %U %S %M' -o "$log.time" "$@" >"$log.out" 2>&1 || rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "peers.sh: killed after ${TIMEOUT} s (PEERS_TIMEOUT)" >>"$log.out"
  [[ $rc -ne 0 ]] && echo "peers.sh: exit status $rc" >>"$log.out"
  local s0 s1
  s0=$(date +%s.%N); sync; s1=$(date +%s.%N)
  T_SYNC=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.3f", b - a }')
  T_WALL=- T_USER=- T_SYS=- T_RSS=-
  if [[ -s "$log.time" ]]; then read -r T_WALL T_USER T_SYS T_RSS < <(tail -n1 "$log.time"); fi
  return "$rc"
}
# warm FILE: the input is read from the page cache, not the disk, in every measurement.
warm() { cat "$1" >/dev/null; }
# warm_repo REPO: so is the repository a restore reads (and its cache), whatever wrote it:
# a tool that wrote its packs through the page cache would otherwise find them there and
# one that wrote them with direct I/O (geosnap) would read them from the disk.
warm_repo() { find "$1" "$1.cache" -type f -exec cat {} + >/dev/null 2>&1 || true; }

# record TOOL SETTING OP REP STATUS STORED STORED_ALL IDENTICAL ALLOC SRC_ALLOC SIZE LOG
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$1" "$2" "$3" "$4" "$5" "$T_WALL" "$T_USER" "$T_SYS" "$T_RSS" \
    "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "$T_SYNC" >>"$RESULTS"
}
fail_row() { # fail_row TOOL SETTING OP REP LOG
  echo "peers.sh: $1 ($2) $3 failed; last lines of $LOGS/$5.out:" >&2
  tail -n 5 "$LOGS/$5.out" >&2 || true
  T_WALL=- T_USER=- T_SYS=- T_RSS=- T_SYNC=-
  record "$1" "$2" "$3" "$4" failed - - - - - - "$5"
  FAILURES=$((FAILURES + 1))
}

# Each tool is driven through three functions that take the same arguments:
#   <tool>_init REPO SETTING           create an empty repository (not measured)
#   <tool>_backup LOG REPO SETTING IMG NAME   one measured backup of IMG (run_timed)
#   <tool>_restore LOG REPO SETTING NAME DIR  one measured restore of NAME into empty DIR
#   <tool>_stored REPO                 bytes the repository holds (one copy)
# Settings: "default" and, where the tool has one, "fixed64k" (disk-image tuning).

# geosnap: three local-directory regions; the instance's image path is a hard link that
# is replaced by the second image for the incremental (dedup is global in the data dir).
geosnap_init() { "$GEOSNAP" -q --data-dir "$1/data" init; }
geosnap_backup() {
  local log=$1 repo=$2 img=$4 name=$5
  ln -f "$img" "$repo/vm.img" || return
  if [[ ! -f "$repo/instance" ]]; then
    "$GEOSNAP" -q --data-dir "$repo/data" instance create vm --image "$repo/vm.img" || return
    touch "$repo/instance"
  fi
  run_timed "$log" "$GEOSNAP" --data-dir "$repo/data" --json snapshot take vm --name "$name" || return
  grep -q '"state": *"available"' "$LOGS/$log.out" || { echo "snapshot not available" >>"$LOGS/$log.out"; return 1; }
}
geosnap_restore() { run_timed "$1" "$GEOSNAP" --data-dir "$2/data" --json restore "vm/$4" --to "$5/vm.img"; }
geosnap_stored() { bytes_of "$1/data/regions/it-1"; }
geosnap_stored_all() { bytes_of "$1/data/regions"; }

# borg: --encryption none; defaults = buzhash chunker (~2 MiB chunks), lz4. Tuned = fixed
# 64 KiB chunks with sparse input detection and sparse extraction. The archive holds the
# image's base name (borg runs in the image directory), extract writes it into DIR.
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg_init() { BORG_BASE_DIR="$1.cache" borg init --encryption none "$1/repo"; }
borg_backup() {
  local log=$1 repo=$2 setting=$3 img=$4 name=$5 tune=()
  [[ $setting = fixed64k ]] && tune=(--chunker-params fixed,65536 --sparse)
  run_timed "$log" env -C "$(dirname "$img")" BORG_BASE_DIR="$repo.cache" \
    borg create "${tune[@]}" "$repo/repo::$name" "$(basename "$img")"
}
borg_restore() {
  local log=$1 repo=$2 setting=$3 name=$4 dir=$5 tune=()
  [[ $setting = fixed64k ]] && tune=(--sparse)
  run_timed "$log" env -C "$dir" BORG_BASE_DIR="$repo.cache" borg extract "${tune[@]}" "$repo/repo::$name"
}
borg_stored() { bytes_of "$1/repo"; }

# restic: always encrypts, so a fixed password; defaults (CDC ~1 MiB average chunks,
# repository format 2 with zstd 'auto' compression). Its cache lives beside the repo.
export RESTIC_PASSWORD=peers-benchmark
restic_init() { RESTIC_CACHE_DIR="$1.cache" restic -r "$1/repo" init; }
restic_backup() {
  local log=$1 repo=$2 img=$4 name=$5
  run_timed "$log" env -C "$(dirname "$img")" RESTIC_CACHE_DIR="$repo.cache" \
    restic -r "$repo/repo" backup --tag "$name" "$(basename "$img")"
}
restic_restore() {
  run_timed "$1" env RESTIC_CACHE_DIR="$2.cache" \
    restic -r "$2/repo" restore latest --tag "$4" --target "$5" "${RESTIC_SPARSE[@]}"
}
restic_stored() { bytes_of "$1/repo"; }

# casync: defaults (buzhash CDC 16/64/256 KiB, zstd, SHA-512/256); a blob index per
# snapshot in the repository directory, chunks in its default store default.castr beside
# it (casync(1)). `casync extract` punches holes for zero runs by default.
casync_init() { mkdir -p "$1/repo"; }
casync_backup() { run_timed "$1" casync make "$2/repo/$5.caibx" "$4"; }
casync_restore() { run_timed "$1" casync extract "$2/repo/$4.caibx" "$5/image.img"; }
casync_stored() { bytes_of "$1/repo"; }

# rustic: defaults (rabin CDC ~1 MiB, zstd, repository v2; restore writes dense files) and
# tuned: fixed 64 KiB chunks set at init, `restore --sparse by-content`. Always encrypts:
# fixed password, cache beside the repository. It stores the path as given (base name).
export RUSTIC_PASSWORD=peers-benchmark
rustic_init() {
  local tune=()
  [[ $2 = fixed64k ]] && tune=(--set-chunker fixed_size --set-chunk-size 64KiB)
  RUSTIC_CACHE_DIR="$1.cache" rustic -r "$1/repo" init "${tune[@]}"
}
rustic_backup() {
  local log=$1 repo=$2 img=$4 name=$5
  run_timed "$log" env -C "$(dirname "$img")" RUSTIC_CACHE_DIR="$repo.cache" \
    rustic --no-progress -r "$repo/repo" backup --tag "$name" "$(basename "$img")"
}
rustic_restore() {
  local tune=()
  [[ $3 = fixed64k ]] && tune=(--sparse by-content)   # holes for zero chunks (not the default)
  run_timed "$1" env RUSTIC_CACHE_DIR="$2.cache" \
    rustic --no-progress -r "$2/repo" restore --filter-tags "$4" "${tune[@]}" latest "$5"
}
rustic_stored() { bytes_of "$1/repo"; }

# init_repo TOOL BASE SETTING LOG: an empty repository (not measured); a failure stops the run.
init_repo() {
  "${1}_init" "$2" "$3" >"$LOGS/$4.out" 2>&1 \
    || { cat "$LOGS/$4.out" >&2; die "$1 ($3): creating the repository in $2 failed"; }
}

# check_restore TOOL SETTING OP REP LOG DIR SRC STORED STORED_ALL: the restore wrote exactly
# one regular file under DIR; compare it with SRC byte for byte and compare allocations.
check_restore() {
  local out identical=no alloc src_alloc
  out=$(find "$6" -type f -print -quit)
  if [[ -z "$out" ]]; then
    echo "no restored file under $6" >>"$LOGS/$5.out"; fail_row "$1" "$2" "$3" "$4" "$5"; return
  fi
  sync
  cmp -s "$out" "$7" && identical=yes
  alloc=$(alloc_of "$out"); src_alloc=$(alloc_of "$7")
  record "$1" "$2" "$3" "$4" ok - - "$identical" "$alloc" "$src_alloc" "$(size_of "$7")" "$5"
}

# One repetition of one tool+setting: fresh repository; full (a), incremental (b), restore
# (b); then a fresh repository for the dense image: full (c), restore (c).
run_case() {
  local tool=$1 setting=$2 rep=$3 base="$RUNS/$1-$2" before after all before_all
  local tag="$tool-$setting-r$rep"
  rm -rf "$base" "$base.cache" "$RUNS/restore"; mkdir -p "$base"
  init_repo "$tool" "$base" "$setting" "$tag-init"

  warm "$IMG_A"
  if "${tool}_backup" "$tag-full" "$base" "$setting" "$IMG_A" full; then
    before=$("${tool}_stored" "$base"); all=-
    [[ $tool = geosnap ]] && all=$(geosnap_stored_all "$base")
    before_all=$all
    record "$tool" "$setting" full "$rep" ok "$before" "$all" - - - "$(size_of "$IMG_A")" "$tag-full"
    warm "$IMG_B"
    if "${tool}_backup" "$tag-incr" "$base" "$setting" "$IMG_B" incr; then
      after=$("${tool}_stored" "$base"); all=-
      [[ $tool = geosnap ]] && all=$(( $(geosnap_stored_all "$base") - before_all ))
      record "$tool" "$setting" incr "$rep" ok $((after - before)) "$all" - - - "$(size_of "$IMG_B")" "$tag-incr"
      mkdir -p "$RUNS/restore"
      warm_repo "$base"
      if "${tool}_restore" "$tag-restore" "$base" "$setting" incr "$RUNS/restore"; then
        check_restore "$tool" "$setting" restore "$rep" "$tag-restore" "$RUNS/restore" "$IMG_B"
      else fail_row "$tool" "$setting" restore "$rep" "$tag-restore"; fi
    else fail_row "$tool" "$setting" incr "$rep" "$tag-incr"; fi
  else fail_row "$tool" "$setting" full "$rep" "$tag-full"; fi
  rm -rf "$RUNS/restore"
  [[ $KEEP -eq 1 ]] || rm -rf "$base" "$base.cache"

  # Dense image, fresh repository.
  base="$RUNS/$1-$2-dense"
  rm -rf "$base" "$base.cache"; mkdir -p "$base"
  init_repo "$tool" "$base" "$setting" "$tag-dinit"
  warm "$IMG_C"
  if "${tool}_backup" "$tag-dfull" "$base" "$setting" "$IMG_C" dense; then
    before=$("${tool}_stored" "$base"); all=-
    [[ $tool = geosnap ]] && all=$(geosnap_stored_all "$base")
    record "$tool" "$setting" dense-full "$rep" ok "$before" "$all" - - - "$(size_of "$IMG_C")" "$tag-dfull"
    mkdir -p "$RUNS/restore"
    warm_repo "$base"
    if "${tool}_restore" "$tag-drestore" "$base" "$setting" dense "$RUNS/restore"; then
      check_restore "$tool" "$setting" dense-restore "$rep" "$tag-drestore" "$RUNS/restore" "$IMG_C"
    else fail_row "$tool" "$setting" dense-restore "$rep" "$tag-drestore"; fi
  else fail_row "$tool" "$setting" dense-full "$rep" "$tag-dfull"; fi
  rm -rf "$RUNS/restore"
  [[ $KEEP -eq 1 ]] || rm -rf "$base" "$base.cache"
}

# ---------------------------------------------------------------------------------------
# 4. Run: repetitions outermost, so that a burst of load elsewhere hits every tool alike.
# ---------------------------------------------------------------------------------------
CASES=()
want geosnap && CASES+=("geosnap default")
want borg && CASES+=("borg default" "borg fixed64k")
want restic && CASES+=("restic default")
want casync && CASES+=("casync default")
want rustic && CASES+=("rustic default" "rustic fixed64k")

rm -rf "$RUNS" "$LOGS"; mkdir -p "$RUNS" "$LOGS"
: >"$RESULTS"
FAILURES=0
T_WALL=- T_USER=- T_SYS=- T_RSS=-
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BENCH_START=$(date +%s)
for rep in $(seq 1 "$REPS"); do
  for c in "${CASES[@]}"; do
    read -r tool setting <<<"$c"
    say "rep $rep/$REPS: $tool ($setting)"
    run_case "$tool" "$setting" "$rep"
  done
done
BENCH_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------
# 5. Report: medians, ratios to geosnap, one markdown table.
# ---------------------------------------------------------------------------------------
image_line() { echo "$1: $(($(size_of "$2") / 1048576)) MiB logical, $(($(alloc_of "$2") / 1048576)) MiB allocated"; }
{
  echo "command=benches/peers.sh${ARGS:+ $ARGS}"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), work dir on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
  echo "reps=$REPS"
  echo "load=load average $LOAD_BEFORE before, $LOAD_AFTER after"
  echo "duration=measurements took $((BENCH_END - BENCH_START)) s (whole script $(( $(date +%s) - START_TS )) s)"
  versions | sed 's/^/version=/'
  echo "image=$(image_line '(a) ext4 2 GiB' "$IMG_A")"
  echo "image=$(image_line '(b) (a) + 1 % rewrite' "$IMG_B") ($(cat "$IMAGES/rewrite.txt" 2>/dev/null || echo 'rewrite count unknown'))"
  echo "image=$(image_line '(c) dense halves 1 GiB' "$IMG_C")"
  [[ -n "$RUSTIC_NOTE" ]] && echo "skipped=rustic: $RUSTIC_NOTE"
  want restic && [[ ${#RESTIC_SPARSE[@]} -eq 0 ]] && echo "note=restic $(restic version | awk '{print $2}') has no restore --sparse: its restores are written dense"
  true
} >"$META"
python3 "$SCRIPT_DIR/peers-report.py" "$RESULTS" "$META" >"$TABLE"
cat "$TABLE"
say "table written to $TABLE; logs in $LOGS"
[[ $FAILURES -eq 0 ]] || die "$FAILURES measurement(s) failed; see the FAILED rows and $LOGS"
