#!/usr/bin/env python3
"""perf/plot.py: turns a perf/latency-at-rate.sh run into pictures and a table.

Reads DIR/latency-at-rate.csv (one row per server and step, written by latency-at-rate.sh from
loadgen's LOADGEN_RESULT lines), DIR/{server}-{pct}.hgrm (loadgen --hgrm: HdrHistogram percentile
distributions, microseconds) and DIR/meta.txt. Writes:

  PNG_DIR/latency-at-rate.png      p50 / p99 / p99.9 against offered rate, one colour per server
  PNG_DIR/latency-percentiles.png  HdrHistogram-style percentile plot (x: 1/(1-p), log) per server
                                   at a few load levels
  RESULTS (optional)               the table, between <!-- latency-at-rate:begin/end --> markers

matplotlib is installed with pip when missing (Agg backend: no display needed).
"""

import argparse
import csv
import math
import os
import subprocess
import sys
import textwrap
import time


def need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py: matplotlib missing; pip install matplotlib", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_rows(d):
    with open(os.path.join(d, "latency-at-rate.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k != "server":
                r[k] = float(v)
    return rows


def read_meta(d):
    meta = {}
    p = os.path.join(d, "meta.txt")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                meta[k] = v
    return meta


def read_hgrm(path):
    """(percentile as a fraction, value in µs) pairs from an HdrHistogram .hgrm file."""
    pts = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("#"):
                try:
                    pts.append((float(parts[1]), float(parts[0])))
                except ValueError:
                    pass
    return pts


COLOURS = {"tracker": "tab:blue", "nginx": "tab:orange"}


def colour(server, i):
    return COLOURS.get(server, "C%d" % (i + 2))


def footnote(fig, text):
    """Run details under the plot, wrapped to the figure's width."""
    lines = textwrap.wrap(text, 150)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="gray", va="bottom")
    fig.tight_layout(rect=(0, 0.015 + 0.02 * len(lines), 1, 1))


def plot_curves(plt, rows, out, meta):
    servers = list(dict.fromkeys(r["server"] for r in rows))
    fig, ax = plt.subplots(figsize=(12, 6), dpi=110)
    styles = [("p50_us", "p50", "-", "o"), ("p99_us", "p99", "--", "s"), ("p999_us", "p99.9", ":", "^")]
    crossed = False
    for i, s in enumerate(servers):
        rs = sorted((r for r in rows if r["server"] == s), key=lambda r: r["offered_rate"])
        x = [r["offered_rate"] / 1000 for r in rs]
        for key, name, ls, mk in styles:
            ax.plot(x, [max(r[key], 1) for r in rs], ls, marker=mk, color=colour(s, i), label="%s %s" % (s, name), markersize=4)
        # Steps where the server (or loadgen) did not keep up: achieved < 99% of offered, or more
        # than 1% of the requests went out only after the end of the run (behind schedule).
        sat = [r for r in rs if r["achieved_rate"] < 0.99 * r["offered_rate"]
               or r.get("sent_after_end", 0) > 0.01 * r["achieved_rate"] * r.get("duration_s", 1.0)]
        if sat:
            ax.plot([r["offered_rate"] / 1000 for r in sat], [max(r["p999_us"], 1) for r in sat], "x", color="red", markersize=10, mew=2,
                    label=None if crossed else "fell behind:\nachieved < 99% of offered,\nor > 1% sent after the end")
            crossed = True
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (thousand requests / s, open loop)")
    ax.set_ylabel("latency from intended send time (µs, log scale)")
    ax.set_title("Latency at rate: tracker vs nginx (1 server core, loadgen on another)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    note = "%s; peak %s req/s = 100%%; %s; %s" % (meta.get("date", ""), meta.get("peak", "?"), meta.get("host", ""), meta.get("note", ""))
    footnote(fig, note)
    fig.savefig(out)
    plt.close(fig)


def pick_levels(pcts):
    want = [p for p in (50, 80, 100) if p in pcts]
    if len(want) >= 2:
        return want
    pcts = sorted(pcts)
    return sorted(set([pcts[0], pcts[len(pcts) // 2], pcts[-1]]))


def plot_percentiles(plt, rows, d, out, meta):
    servers = list(dict.fromkeys(r["server"] for r in rows))
    pcts = sorted(set(int(r["pct"]) for r in rows))
    levels = pick_levels(pcts)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    styles = ["-", "--", ":", "-."]
    xmax = 1
    for i, s in enumerate(servers):
        for j, p in enumerate(levels):
            path = os.path.join(d, "%s-%d.hgrm" % (s, p))
            if not os.path.exists(path):
                continue
            pts = [(q, v) for q, v in read_hgrm(path) if q < 1.0]
            if not pts:
                continue
            x = [1 / (1 - q) for q, _ in pts]
            xmax = max(xmax, x[-1])
            rate = next((r["offered_rate"] for r in rows if r["server"] == s and int(r["pct"]) == p), 0)
            ax.plot(x, [max(v, 1) for _, v in pts], styles[j % len(styles)], color=colour(s, i),
                    label="%s at %d%% (%.0fk req/s)" % (s, p, rate / 1000))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 10, 100, 1000, 10000, 100000]
    ticks = [t for t in ticks if t <= max(10, xmax * 1.5)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"][: len(ticks)])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from intended send time (µs, log scale)")
    ax.set_title("Latency by percentile (HdrHistogram-style), open loop at fixed rates")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    footnote(fig, "%s; %s; %s" % (meta.get("date", ""), meta.get("host", ""), meta.get("note", "")))
    fig.savefig(out)
    plt.close(fig)


def table(rows, meta, png_rel):
    servers = list(dict.fromkeys(r["server"] for r in rows))
    out = []
    out.append("### %s: latency at rate (perf/latency-at-rate.sh)\n" % meta.get("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    out.append("- command: `%s`" % meta.get("command", "?"))
    out.append("- each step: `%s` on a fresh server" % meta.get("loadgen", "?"))
    if meta.get("out_dir"):
        out.append("- raw data ($OUT_DIR): `%s/` — `.hlog` interval logs, `.hgrm` percentile distributions, `latency-at-rate.csv`" % meta["out_dir"])
    for s in meta.get("servers", "").split(";"):
        if s:
            out.append("- server: `%s`" % s)
    out.append("- peak (100%%): %s req/s, the higher of: %s" % (meta.get("peak", "?"), meta.get("peaks", "?")))
    out.append("- host: %s" % meta.get("host", "?"))
    if meta.get("note"):
        out.append("- **%s**" % meta["note"])
    out.append("- latency is measured from each request's *intended* send time (coordinated-omission corrected); "
               "achieved < offered, or many requests sent after the end, means the server (or loadgen) fell behind at that rate. "
               "*loadgen wake*: how late loadgen's own timer woke after the intended time; a large value means the delay was "
               "on loadgen's side (its core taken by something else), not the server's.")
    out.append("")
    out.append("![latency at rate](%s) ![percentiles](%s)" % (png_rel[0], png_rel[1]))
    out.append("")
    out.append("| offered | req/s offered | server | req/s achieved | p50 µs | p90 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | sent after end | non-2xx | errors | loadgen wake p99 / max µs |")
    out.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["pct"], servers.index(r["server"]))):
        errs = r["conn_errors"] + r["timeouts"] + r["protocol_errors"]
        if "wake_p99_us" not in r:
            wake = "—"
        elif math.isnan(r["wake_p99_us"]):
            wake = "n/a (never ahead of schedule)"
        else:
            wake = "%.0f / %.0f" % (r["wake_p99_us"], r["wake_max_us"])
        out.append("| %d%% | %.0f | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %d | %d | %d | %s |" % (
            r["pct"], r["offered_rate"], r["server"], r["achieved_rate"], r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"],
            r["p9999_us"], r["max_us"], r.get("sent_after_end", 0), r["non2xx"], errs, wake))
    out.append("")
    return "\n".join(out)


def write_results(path, text):
    begin, end = "<!-- latency-at-rate:begin -->", "<!-- latency-at-rate:end -->"
    body = open(path).read() if os.path.exists(path) else "# tracker perf results\n"
    if begin not in body or end not in body:
        body = body.rstrip("\n") + "\n\n## latency-at-rate\n\n%s\n%s\n" % (begin, end)
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + "\n" + text + end + tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="latency-at-rate.sh output dir (csv, hgrm, meta.txt)")
    ap.add_argument("--png-dir", required=True)
    ap.add_argument("--results", help="RESULTS.md to write the table into")
    a = ap.parse_args()
    rows = read_rows(a.dir)
    if not rows:
        sys.exit("plot.py: no rows in %s/latency-at-rate.csv" % a.dir)
    meta = read_meta(a.dir)
    plt = need_matplotlib()
    curves = os.path.join(a.png_dir, "latency-at-rate.png")
    dist = os.path.join(a.png_dir, "latency-percentiles.png")
    plot_curves(plt, rows, curves, meta)
    plot_percentiles(plt, rows, a.dir, dist, meta)
    print("plot.py: wrote %s and %s" % (curves, dist), file=sys.stderr)
    text = table(rows, meta, ("latency-at-rate.png", "latency-percentiles.png"))
    if a.results:
        write_results(a.results, text)
        print("plot.py: wrote the latency-at-rate section of %s" % a.results, file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
