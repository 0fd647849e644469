#!/usr/bin/env python3
"""Turns bench/coldstart.sh's raw rows into one table (stdout) and bench/RESULTS.md.

Inputs (tab-separated):
  results.tsv  image tool run seconds bytes status   (one row per measured run)
  floor.tsv    image files_read raw_bytes gzip_bytes runc_median_seconds
  sizes.tsv    image format compressed_layer_bytes
Medians are over the runs whose status is "ok"; a row with no ok run shows the
failure instead of numbers.
"""
import argparse
import collections
import datetime
import statistics

# (tool key, label, image format it pulls)
ROWS = [
    ("fullpull", "full pull (skopeo copy + umoci unpack + runc run)", "gzip"),
    ("podman", "podman pull + podman run", "gzip"),
    ("stargz", "stargz-snapshotter (rpull + ctr-remote run)", "esgz"),
    ("skiff-gzip", "skiff run, cold, plain gzip + published index", "gzip"),
    ("skiff-esgz", "skiff run, cold, eStargz", "esgz"),
    ("skiff-zstd", "skiff run, cold, zstd:chunked", "zstd"),
    ("skiff-profile", "skiff run, cold, eStargz + recorded prefetch profile", "esgz"),
    ("skiff-warm", "skiff run, warm cache (eStargz)", "esgz"),
]
SKIFF_ROW_NOTE = {
    "skiff-profile": "n/a (no --record-profile yet)",
}


def read_tsv(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def fmt_ratio(x, ref):
    return f"{x / ref:.2f}×" if x is not None and ref else "–"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", default="not recorded")
    for flag in ("results", "floor", "sizes", "machine", "calibration", "skiff",
                 "tools", "commands", "out"):
        ap.add_argument("--" + flag, required=True)
    ap.add_argument("--rate-mbit", type=float, required=True)
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--skiff-rows", type=int, required=True)
    a = ap.parse_args()
    tools = a.tools.split(",")

    runs = collections.defaultdict(list)  # (image, tool) -> [(secs, bytes, status)]
    for img, tool, _n, secs, nbytes, status in read_tsv(a.results):
        runs[(img, tool)].append((float(secs), int(nbytes), status))
    floors = {r[0]: r[1:] for r in read_tsv(a.floor)}
    sizes = {(r[0], r[1]): int(r[2]) for r in read_tsv(a.sizes)}
    images = list(dict.fromkeys([r[0] for r in read_tsv(a.sizes)]))

    rtt = a.rtt_ms / 1000
    bw = a.rate_mbit * 1e6 / 8  # bytes/s
    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append("# Cold-start benchmark results\n")
    out.append(f"- date: {now}")
    out.append(f"- machine: {a.machine}")
    out.append(f"- load: {a.load} (a shared machine: other work adds noise)")
    out.append(f"- link: {a.rate_mbit:g} Mbit/s, {a.rtt_ms:g} ms RTT (bench/shaper.py on loopback)")
    out.append(f"- link check: {a.calibration}")
    out.append(f"- runs: {a.runs} per system (medians; min–max in brackets)")
    out.append(f"- commands: {a.commands}")
    out.append(f"- skiff binary: {a.skiff}")
    out.append("- time: command start to container exit. Peers: the total their "
               "/work/shared/peers script prints (stargz: rpull + run, daemons already up); "
               "skiff: wall time of `skiff --root EMPTY run --rm IMAGE CMD`.")
    out.append("- MB: registry→client bytes through the shaper during the run; % of the "
               "compressed layers of the format pulled.")
    out.append("- floor = gzip -6 size of the files the command reads ÷ bandwidth + 4 RTT "
               "(connect, manifest, config/TOC, data) + runc run on the unpacked bundle "
               "(container setup + the program itself, warm page cache).\n")

    for img in images:
        fl = floors.get(img)
        floor_s = None
        out.append(f"## {img}\n")
        if fl:
            nfiles, raw, gz, runc_s = int(fl[0]), int(fl[1]), int(fl[2]), float(fl[3])
            floor_s = gz / bw + 4 * rtt + runc_s
            out.append(f"Files the command reads: {nfiles}, {raw / 1e6:.1f} MB "
                       f"({gz / 1e6:.1f} MB gzipped). runc run on the unpacked bundle: "
                       f"{runc_s:.3f} s. Floor: {gz / 1e6:.1f} MB ÷ {a.rate_mbit:g} Mbit/s "
                       f"+ 4 × {a.rtt_ms:g} ms + {runc_s:.3f} s = **{floor_s:.2f} s**.\n")
        sz = ", ".join(f"{f} {sizes[(img, f)] / 1e6:.1f} MB" for f in ("gzip", "esgz", "zstd")
                       if (img, f) in sizes)
        out.append(f"Compressed image size: {sz}.\n")

        def med(tool):
            ok = [r for r in runs.get((img, tool), []) if r[2] == "ok"]
            if not ok:
                return None
            return (statistics.median(r[0] for r in ok), min(r[0] for r in ok),
                    max(r[0] for r in ok), statistics.median(r[1] for r in ok), len(ok))

        ref_full = (med("fullpull") or (None,))[0]
        ref_sgz = (med("stargz") or (None,))[0]
        out.append("| system | time s (min–max) | MB fetched | % of image | × full pull | × stargz | × floor | ok runs |")
        out.append("|---|---|---|---|---|---|---|---|")
        for tool, label, fmt in ROWS:
            base = tool.split("-")[0]
            if base not in tools and not runs.get((img, tool)):
                continue
            m = med(tool)
            all_runs = runs.get((img, tool), [])
            if m is None:
                if tool in SKIFF_ROW_NOTE:
                    why = SKIFF_ROW_NOTE[tool]
                elif tool.startswith("skiff") and not a.skiff_rows:
                    why = "n/a (`skiff run IMAGE` not in this build)"
                elif all_runs:
                    why = "failed: " + ", ".join(sorted({r[2] for r in all_runs}))
                else:
                    why = "n/a (not run)"
                out.append(f"| {label} | {why} | | | | | | |")
                continue
            t, lo, hi, b, nok = m
            size = sizes.get((img, fmt))
            pct = f"{100 * b / size:.1f}%" if size else "–"
            out.append(f"| {label} | {t:.2f} ({lo:.2f}–{hi:.2f}) | {b / 1e6:.1f} | {pct} | "
                       f"{fmt_ratio(t, ref_full)} | {fmt_ratio(t, ref_sgz)} | "
                       f"{fmt_ratio(t, floor_s)} | {nok}/{len(all_runs)} |")
        if fl:
            out.append(f"| runc run, unpacked bundle (warm reference) | {runc_s:.2f} | 0 | | "
                       f"{fmt_ratio(runc_s, ref_full)} | {fmt_ratio(runc_s, ref_sgz)} | | |")
            out.append(f"| floor | {floor_s:.2f} | {gz / 1e6:.1f} | "
                       f"{100 * gz / sizes[(img, 'gzip')]:.1f}% | {fmt_ratio(floor_s, ref_full)} | "
                       f"{fmt_ratio(floor_s, ref_sgz)} | 1.00× | |"
                       if (img, "gzip") in sizes else "")
        out.append("")

    text = "\n".join(out) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
