#!/usr/bin/env bash
# swift-aio.sh - single-node OpenStack Swift with the S3 API (s3api + tempauth)
# on loopback, for geosnap's S3 integration tests in CI.
#
# Usage:
#   scripts/swift-aio.sh start DIR  install Debian's swift packages and memcached if missing, write
#       configs and rings under DIR, start memcached, the account/container/object servers and
#       the proxy, wait (<= 60 s) until a SigV4-signed S3 CreateBucket works, print
#       the endpoint. Idempotent: exits 0 at once if already running.
#   scripts/swift-aio.sh stop DIR   stop what `start` started (exit 0 if nothing runs)
#   scripts/swift-aio.sh env DIR    print export lines: eval "$(scripts/swift-aio.sh env DIR)"
#   scripts/swift-aio.sh s3 DIR METHOD PATH [BODY_FILE|-] [Header:Value ...]
#       send one SigV4-signed request (debugging): status+headers on stderr, body on stdout
#
# Everything lives under DIR (etc/ configs+rings, srv/node/d1 the one device,
# run/ pid files, log/ server output, cache/); nothing is written to /etc/swift
# or /srv. The proxy listens on 127.0.0.1:${SWIFT_AIO_PORT:-8080}; the storage
# servers on 127.0.0.1:6200 (object), 6201 (container), 6202 (account); a private
# memcached on 127.0.0.1:6203 caches account/container info for the proxy, as in
# any real deployment (without it every S3 request costs two extra backend HEADs
# and restores run at a third of the speed).
# S3 credentials: access key "test:tester", secret "testing", region us-east-1,
# path-style addressing. DIR's filesystem must support user xattrs.
# SWIFT_AIO_PROXY_WORKERS (default 1) sets the proxy's worker processes.
set -euo pipefail

PY=/usr/bin/python3          # Debian's python, a dependency of python3-swift
SERVERS=(account container object)
declare -A PORT=([object]=6200 [container]=6201 [account]=6202 [memcached]=6203)
ACCESS_KEY=test:tester SECRET_KEY=testing REGION=us-east-1

die() { echo "swift-aio: $*" >&2; exit 1; }
log() { echo "swift-aio: $*" >&2; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }

# The embedded helper: AWS SigV4 signing with hmac/hashlib (stdlib only).
HELPER=$(cat <<'PY'
import datetime, hashlib, hmac, http.client, os, re, sys, urllib.parse

def s3(method, path, body=b"", headers=None):
    ep = urllib.parse.urlsplit(os.environ["GEOSNAP_S3_ENDPOINT"])
    key, secret = os.environ["GEOSNAP_S3_ACCESS_KEY_ID"], os.environ["GEOSNAP_S3_SECRET_ACCESS_KEY"]
    region = os.environ["GEOSNAP_S3_REGION"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path, _, query = path.partition("?")
    path = urllib.parse.quote(path, safe="/~")
    q = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    cq = "&".join(urllib.parse.quote(k, safe="~") + "=" + urllib.parse.quote(v, safe="~") for k, v in q)
    h = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    h.setdefault("x-amz-content-sha256", hashlib.sha256(body).hexdigest())
    h.update({"host": ep.netloc, "x-amz-date": now})
    signed = ";".join(sorted(h))
    creq = "\n".join([method, path, cq, "".join(f"{k}:{h[k]}\n" for k in sorted(h)),
                      signed, h["x-amz-content-sha256"]])
    scope = f"{now[:8]}/{region}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (now[:8], region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                          f"SignedHeaders={signed}, Signature={sig}")
    conn = http.client.HTTPConnection(ep.hostname, ep.port or 80, timeout=5)
    try:
        conn.request(method, path + ("?" + cq if cq else ""), body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        conn.close()

mode, args = sys.argv[1], sys.argv[2:]
if mode == "xattr":       # does the device directory support user xattrs?
    os.setxattr(args[0], "user.swift.aio", b"1"); os.removexattr(args[0], "user.swift.aio")
elif mode == "probe":     # CreateBucket + DeleteBucket; exit 0 when both work
    try:
        st, _, body = s3("PUT", "/probe-bucket-xyz")
        if st in (200, 409):
            st, _, body = s3("DELETE", "/probe-bucket-xyz")
    except OSError as e:
        sys.exit(f"probe: {e}")
    code = re.search(rb"<Code>(.*?)</Code>", body)
    sys.exit(0 if st == 204 else f"probe: HTTP {st} {code[1].decode() if code else ''}")
elif mode == "req":       # METHOD PATH [BODY_FILE|-] [Header:Value ...]
    body = b""
    if len(args) > 2 and ":" not in args[2]:
        body = sys.stdin.buffer.read() if args[2] == "-" else open(args[2], "rb").read()
        args = args[:2] + args[3:]
    hdrs = dict(a.split(":", 1) for a in args[2:])
    st, rh, data = s3(args[0], args[1], body, hdrs)
    print(f"HTTP {st}", *(f"{k}: {v}" for k, v in rh), sep="\n", file=sys.stderr)
    sys.stdout.buffer.write(data)
    sys.exit(0 if st < 400 else 1)
PY
)
helper() { "$PY" -c "$HELPER" "$@"; }

# Swift 2.30's servers read /etc/swift/swift.conf (hash prefix/suffix, storage
# policies, constraints) whatever swift_dir says; point them at DIR/etc first,
# then run the installed server script. argv: SWIFT_DIR SERVER_BIN CONF [opts]
LAUNCH='import runpy, sys
from swift.common import constraints, storage_policy, utils
utils.set_swift_dir(sys.argv[1])
storage_policy.reload_storage_policies()
constraints.reload_constraints()
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")'

proxy_port() {
    local p=""
    [[ -f $DIR/etc/proxy-server.conf ]] &&
        p=$(awk -F' *= *' '$1 == "bind_port" { print $2; exit }' "$DIR/etc/proxy-server.conf")
    echo "${p:-${SWIFT_AIO_PORT:-8080}}"
}

export_creds() {
    GEOSNAP_S3_ENDPOINT="http://127.0.0.1:$(proxy_port)"
    export GEOSNAP_S3_ENDPOINT GEOSNAP_S3_ACCESS_KEY_ID=$ACCESS_KEY \
           GEOSNAP_S3_SECRET_ACCESS_KEY=$SECRET_KEY GEOSNAP_S3_REGION=$REGION
}

# is the pid in file $1 running, and one of our servers for DIR (not a reused pid)?
alive() { [[ -f $1 ]] && grep -qaF -- "$DIR/" "/proc/$(cat "$1")/cmdline" 2>/dev/null; }

install_packages() {
    local bin missing=0 pkgs=(swift swift-proxy swift-object swift-container swift-account python3-swift memcached)
    for bin in swift-ring-builder swift-proxy-server swift-object-server \
               swift-container-server swift-account-server memcached "$PY"; do
        command -v "$bin" >/dev/null || missing=1
    done
    ((missing)) || return 0
    local sudo=(); ((EUID == 0)) || sudo=(sudo)
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$DIR/log/apt.log" 2>&1 || {
        "${sudo[@]}" apt-get update -q >>"$DIR/log/apt.log" 2>&1
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$DIR/log/apt.log" 2>&1
    } || { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get install failed"; }
}

write_configs() {
    local e=$DIR/etc s common
    if [[ ! -f $e/swift.conf ]]; then   # random hash prefix/suffix, fixed for DIR's lifetime
        cat >"$e/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = $(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
swift_hash_path_suffix = $(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

[storage-policy:0]
name = Policy-0
default = yes
EOF
    fi
    common="bind_ip = 127.0.0.1
workers = 1
user = $(id -un)
swift_dir = $e
devices = $DIR/srv/node
mount_check = false
recon_cache_path = $DIR/cache"
    for s in "${SERVERS[@]}"; do
        printf '[DEFAULT]\n%s\nbind_port = %s\n\n[pipeline:main]\npipeline = %s-server\n\n[app:%s-server]\nuse = egg:swift#%s\n' \
            "$common" "${PORT[$s]}" "$s" "$s" "$s" >"$e/$s-server.conf"
    done
    cat >"$e/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${SWIFT_AIO_PORT:-8080}
workers = ${SWIFT_AIO_PROXY_WORKERS:-1}
user = $(id -un)
swift_dir = $e

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = $REGION

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${PORT[memcached]}
EOF
    for s in catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk tempurl \
             ratelimit copy container-quotas account-quotas slo dlo versioned_writes; do
        printf '\n[filter:%s]\nuse = egg:swift#%s\n' "$s" "${s//-/_}" >>"$e/proxy-server.conf"
    done
}

build_rings() {
    local s
    for s in "${SERVERS[@]}"; do
        [[ -f $DIR/etc/$s.ring.gz ]] && continue
        rm -f "$DIR/etc/$s.builder"
        swift-ring-builder "$DIR/etc/$s.builder" create 10 1 1
        swift-ring-builder "$DIR/etc/$s.builder" add --region 1 --zone 1 --ip 127.0.0.1 \
            --port "${PORT[$s]}" --device d1 --weight 100
        swift-ring-builder "$DIR/etc/$s.builder" rebalance
    done >"$DIR/log/rings.log" 2>&1 || { cat "$DIR/log/rings.log" >&2; die "ring build failed"; }
}

# signal PID and, when it leads its own process group (the servers setsid()
# themselves), the whole group so that forked workers go too
signal_server() { kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

any_alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

stop_all() {
    local f pid n pids=()
    for f in "$DIR"/run/*.pid; do
        [[ -f $f ]] || continue
        if alive "$f"; then pid=$(cat "$f"); pids+=("$pid"); signal_server TERM "$pid"; fi
        rm -f "$f"
    done
    for ((n = 0; n < 100; n++)); do     # up to 10 s for all of them together
        any_alive "${pids[@]}" || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        log "pid $pid ignored TERM; killing"
        signal_server KILL "$pid"
    done
}

start() {
    local s pid port pids=() all=1 t0=$SECONDS
    mkdir -p "$DIR"/{etc,srv/node/d1,run,log,cache}
    for s in "${SERVERS[@]}" proxy memcached; do alive "$DIR/run/$s.pid" || all=0; done
    if ((all)); then
        export_creds; log "already running"; echo "$GEOSNAP_S3_ENDPOINT"; return 0
    fi
    compgen -G "$DIR/run/*.pid" >/dev/null && log "cleaning up a previous (partial) run"
    stop_all
    for s in "${SERVERS[@]}" proxy memcached; do   # fail fast if a port is taken
        port=${PORT[$s]:-${SWIFT_AIO_PORT:-8080}}
        port_open "$port" && die "127.0.0.1:$port ($s) is already in use"
    done
    install_packages
    helper xattr "$DIR/srv/node/d1" || die "$DIR/srv/node/d1 lacks user xattr support (tmpfs?)"
    write_configs
    echo "$LAUNCH" >"$DIR/etc/launch.py"
    build_rings
    # -P only marks the command line as ours (alive() looks for DIR there)
    memcached -l 127.0.0.1 -p "${PORT[memcached]}" -U 0 -m 64 -u "$(id -un)" \
        -P "$DIR/run/memcached.pidfile" </dev/null >"$DIR/log/memcached.log" 2>&1 &
    echo $! >"$DIR/run/memcached.pid"
    pids+=("$!")
    for s in "${SERVERS[@]}" proxy; do
        "$PY" "$DIR/etc/launch.py" "$DIR/etc" "$(command -v "swift-$s-server")" \
            "$DIR/etc/$s-server.conf" --verbose </dev/null >"$DIR/log/$s.log" 2>&1 &
        echo $! >"$DIR/run/$s.pid"
        pids+=("$!")
    done
    export_creds
    # probe only once the storage servers listen: the proxy error-limits a node
    # for 60 s after 10 failed connections, which would stall the bring-up
    local deadline=$((SECONDS + 60)) err="storage servers not listening"
    until port_open "${PORT[account]}" && port_open "${PORT[container]}" &&
          port_open "${PORT[object]}" && err=$(helper probe 2>&1); do
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || err="server pid $pid exited; $err"; done
        if [[ $err == *exited* ]] || ((SECONDS >= deadline)); then
            log "not ready after $((SECONDS - t0)) s: $err"
            for s in "${SERVERS[@]}" proxy; do
                echo "----- $DIR/log/$s.log (tail, memcached noise dropped)" >&2
                grep -v memcached "$DIR/log/$s.log" | tail -n 25 >&2 || true
            done
            stop_all
            exit 1
        fi
        sleep 0.5
    done
    log "ready in $((SECONDS - t0)) s"
    echo "$GEOSNAP_S3_ENDPOINT"
}

[[ $# -ge 2 ]] || usage
cmd=$1
DIR=$2
case $cmd in
    start) mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd); start ;;
    stop)  [[ -d $DIR ]] || exit 0; DIR=$(cd "$DIR" && pwd); stop_all; log "stopped" ;;
    env)   [[ -d $DIR ]] && DIR=$(cd "$DIR" && pwd); export_creds
           for v in ENDPOINT ACCESS_KEY_ID SECRET_ACCESS_KEY REGION; do
               v=GEOSNAP_S3_$v; printf 'export %s=%q\n' "$v" "${!v}"
           done ;;
    s3)    [[ $# -ge 4 ]] || usage; DIR=$(cd "$DIR" && pwd); export_creds; shift 2; helper req "$@" ;;
    *)     usage ;;
esac
