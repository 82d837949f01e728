#!/usr/bin/env python3
"""Turn benches/peers.sh's raw results into one markdown table.

Usage: peers-report.py RESULTS.tsv META.txt

RESULTS.tsv has one line per measured command and repetition:
  tool setting op rep status wall user sys rss_kib stored stored_all identical alloc
  src_alloc image_size log sync
('-' where a field does not apply). META.txt holds key=value lines for the header.
Every figure in the table is the median over the repetitions; the ratio column is the
tool's median wall time divided by geosnap's for the same operation (> 1: geosnap faster).
"""
import statistics
import sys

OPS = [
    ("full", "full, 2 GiB ext4 (a)"),
    ("incr", "incremental, (b) = (a) + 1 % rewrite"),
    ("restore", "restore (b)"),
    ("dense-full", "full, 1 GiB dense (c)"),
    ("dense-restore", "restore (c)"),
]
SPARSE_SLACK = 1.05  # restored allocation may exceed the source's by 5 %


def num(x):
    return None if x in ("-", "") else float(x)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def main():
    results_path, meta_path = sys.argv[1], sys.argv[2]
    rows = []
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 16:
                parts.append("-")  # results from before the sync column
            if len(parts) != 17:
                continue
            keys = ("tool setting op rep status wall user sys rss stored stored_all "
                    "identical alloc src_alloc size log sync").split()
            rows.append(dict(zip(keys, parts)))
    meta = []
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta.append((k, v))

    cases = []  # (tool, setting) in the order they ran
    for r in rows:
        if (r["tool"], r["setting"]) not in cases:
            cases.append((r["tool"], r["setting"]))

    def group(tool, setting, op):
        return [r for r in rows if (r["tool"], r["setting"], r["op"]) == (tool, setting, op)]

    def durable(r):
        w, s = num(r["wall"]), num(r["sync"])
        return None if w is None or s is None else w + s

    geo_wall, geo_durable = {}, {}
    for op, _ in OPS:
        g = [r for r in group("geosnap", "default", op) if r["status"] == "ok"]
        geo_wall[op] = med([num(r["wall"]) for r in g])
        geo_durable[op] = med([durable(r) for r in g])

    out = []
    meta_d = {}
    for k, v in meta:
        meta_d.setdefault(k, []).append(v)
    reps = meta_d.get("reps", ["?"])[0]
    out.append(f"## Peer comparison ({'median of ' + reps if reps != '1' else 'one run'}, "
               f"{meta_d.get('date', ['?'])[0]})")
    out.append("")
    out.append(f"Command: `{meta_d.get('command', ['?'])[0]}`  ")
    out.append(f"Machine: {meta_d.get('machine', ['?'])[0]}; {meta_d.get('load', ['?'])[0]}; "
               f"{meta_d.get('duration', ['?'])[0]}  ")
    out.append("Versions: " + "; ".join(meta_d.get("version", [])) + "  ")
    out.append("Images: " + "; ".join(meta_d.get("image", [])))
    out.append("")
    out.append("| tool | setting | operation | wall s | CPU s (user+sys) | peak RSS MiB | "
               "stored MB | MB/s (logical) | wall ÷ geosnap | wall + sync s | "
               "(wall + sync) ÷ geosnap | identical | sparse |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for op, label in OPS:
        for tool, setting in cases:
            g = group(tool, setting, op)
            if not g:
                continue
            ok = [r for r in g if r["status"] == "ok"]
            failed = len(g) - len(ok)
            if not ok:
                logs = ", ".join(f"logs/{r['log']}.out" for r in g)
                out.append(f"| {tool} | {setting} | {label} | FAILED | | | | | | | | | "
                           f"see {logs} |")
                continue
            wall = med([num(r["wall"]) for r in ok])
            cpu = med([num(r["user"]) + num(r["sys"]) for r in ok])
            rss = med([num(r["rss"]) / 1024 for r in ok])
            size = num(ok[0]["size"])
            mbps = size / 1e6 / wall if wall else None
            ratio = wall / geo_wall[op] if wall and geo_wall.get(op) else None
            dur = med([durable(r) for r in ok])
            dur_ratio = dur / geo_durable[op] if dur and geo_durable.get(op) else None
            stored = "—"
            if op in ("full", "incr", "dense-full"):
                s = med([num(r["stored"]) for r in ok])
                sa = med([num(r["stored_all"]) for r in ok])
                stored = ("+" if op == "incr" else "") + fmt(s / 1e6, 0)
                if sa is not None:
                    stored += f" (3 regions: {'+' if op == 'incr' else ''}{sa / 1e6:.0f})"
            identical = sparse = "—"
            if op.endswith("restore"):
                identical = "yes" if all(r["identical"] == "yes" for r in ok) else "**no**"
                worst = max(ok, key=lambda r: num(r["alloc"]) / max(num(r["src_alloc"]), 1))
                a, sa = num(worst["alloc"]), num(worst["src_alloc"])
                if a <= sa * SPARSE_SLACK:
                    sparse = "yes"
                else:
                    sparse = f"**no** ({a / 2**20:.0f} MiB allocated, source {sa / 2**20:.0f} MiB)"
            note = f" ({failed} of {len(g)} runs failed)" if failed else ""
            walls = [num(r["wall"]) for r in ok]
            wall_cell = fmt(wall, 2)
            if len(walls) > 1:
                wall_cell += f" ({min(walls):.1f}–{max(walls):.1f})"
            out.append(f"| {tool} | {setting}{note} | {label} | {wall_cell} | {fmt(cpu, 2)} | "
                       f"{fmt(rss, 0)} | {stored} | {fmt(mbps, 0)} | "
                       f"{fmt(ratio, 2)} | {fmt(dur, 2)} | {fmt(dur_ratio, 2)} | "
                       f"{identical} | {sparse} |")
    for s in meta_d.get("skipped", []):
        tool, why = s.split(": ", 1)
        out.append(f"| {tool} | — | all | {why} | | | | | | | | | |")
    out.append("")
    out.append("Notes: wall, CPU and RSS from `/usr/bin/time -f '%e %U %S %M'`, medians per column "
               "(wall: min–max of the runs in brackets); "
               "inputs in the page cache (`cat img > /dev/null`), `sync` before each command, "
               "wall = the command as the tool runs it; wall + sync adds a `sync` right after it, "
               "i.e. the time until what the tool wrote is on disk (geosnap fsyncs its "
               "regions and restored files itself, some peers leave write-back to the kernel); "
               "repositories on the work dir's filesystem, a fresh one per repetition. "
               "Stored MB = `du -sb` of the repository in 10^6 bytes (geosnap: region it-1, "
               "all three regions in brackets); incremental rows give what the second snapshot "
               "added. MB/s = logical image size (10^6 bytes) / wall. Sparse = restored "
               "allocation ≤ source allocation + 5 %. borg runs with `--encryption none`; "
               "restic and rustic always encrypt (fixed password in the environment). "
               "Settings: default = the tool's defaults; fixed64k = disk-image tuning "
               "(borg `--chunker-params fixed,65536 --sparse` and `extract --sparse`; rustic "
               "`init --set-chunker fixed_size --set-chunk-size 64KiB` and `restore --sparse by-content`).")
    for n in meta_d.get("note", []):
        out.append(f"Note: {n}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
