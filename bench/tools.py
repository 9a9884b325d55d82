#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  tools.py render TEMPLATE OUT NAME=VALUE...   fill @NAME@ placeholders (VALUE @file reads a file)
  tools.py clients DIR PREFIX N [PROFILE]     caller keys -> gateway TOML, nginx map, Varnish VCL
  tools.py storm --port P --path PATH --key K -n N [--timeout S]
                                              N concurrent first requests, each on a new
                                              connection; prints one JSON line
  tools.py rss PID...                         sum of VmHWM and VmRSS (KiB) over PIDs and children
  tools.py report OUT                         the tables of a run, in Markdown

A wrk result file is wrk's own output (`--latency`); run.sh names them
OUT/wrk/<scenario>.<system>.r<round>.txt.
"""

import hashlib
import json
import os
import re
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path

UPSTREAM_ACCOUNT_ENV = "BENCH_UPSTREAM_KEY"


# ---------------------------------------------------------------- render / clients


def render(template, out, pairs):
    text = Path(template).read_text()
    for pair in pairs:
        name, _, value = pair.partition("=")
        if value.startswith("@"):
            value = Path(value[1:]).read_text()
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        sys.exit(f"render {template}: unfilled placeholders {sorted(set(left))}")
    Path(out).write_text(text)


def sha256_key(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def clients(directory, prefix, n, profile=None):
    """N clients, each with its own account (the cache is keyed per account), all accounts
    sharing the one fake upstream key. Writes accounts.toml, clients.toml, clients.map,
    clients.vcl into DIRECTORY; keys are PREFIX-<i>."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    accounts, cl, nmap, vcl = [], [], [], []
    for i in range(n):
        name = f"{prefix}-{i}"
        key = f"{prefix}-key-{i}-0123456789abcdef"
        accounts.append(f'[[accounts]]\nname = "{name}"\napi_key_env = "{UPSTREAM_ACCOUNT_ENV}"\n')
        extra = ""
        if profile:
            extra = f'profile = "{profile}"\nrate = "1000000/s"\nburst = 1000000\n'
        cl.append(
            f'[[clients]]\nname = "{name}"\nkeys = ["{sha256_key(key)}"]\naccount = "{name}"\n{extra}'
        )
        nmap.append(f'"APIKey {key}" "{name}";')
        word = "if" if i == 0 else "elsif"
        vcl.append(
            f'{word} (req.http.Authorization == "APIKey {key}") '
            f'{{ set req.http.X-Bench-Client = "{name}"; }}'
        )
    (d / "accounts.toml").write_text("\n".join(accounts))
    (d / "clients.toml").write_text("\n".join(cl))
    (d / "clients.map").write_text("\n".join(nmap) + "\n")
    (d / "clients.vcl").write_text("\n    ".join(vcl))


# ---------------------------------------------------------------- storm


def storm(port, path, key, n, timeout):
    """Opens N connections at once, sends one request on each as soon as it is connected, and
    times each from its connect() to the end of its response body."""
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: APIKey {key}\r\nConnection: close\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    deadline = started + timeout
    latencies, statuses, errors = [], {}, {}
    last_done = started
    pending = 0

    def fail(conn, why):
        nonlocal pending
        errors[why] = errors.get(why, 0) + 1
        sel.unregister(conn["sock"])
        conn["sock"].close()
        pending -= 1

    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        conn = {"sock": s, "t0": time.perf_counter(), "buf": b"", "sent": False, "need": None}
        rc = s.connect_ex(("127.0.0.1", port))
        if rc not in (0, 115):  # EINPROGRESS
            errors[f"connect:{rc}"] = errors.get(f"connect:{rc}", 0) + 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE, conn)
        pending += 1
    spread_ms = (time.perf_counter() - started) * 1000

    while pending > 0 and time.perf_counter() < deadline:
        for k, _ in sel.select(timeout=max(0.0, min(0.5, deadline - time.perf_counter()))):
            conn, s = k.data, k.fileobj
            if not conn["sent"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(conn, f"connect:{err}")
                    continue
                try:
                    s.sendall(req)
                except OSError as e:
                    fail(conn, f"send:{e.errno}")
                    continue
                conn["sent"] = True
                sel.modify(s, selectors.EVENT_READ, conn)
                continue
            try:
                chunk = s.recv(65536)
            except OSError as e:
                fail(conn, f"recv:{e.errno}")
                continue
            conn["buf"] += chunk
            buf = conn["buf"]
            if conn["need"] is None:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].decode("latin-1")
                    m = re.search(r"(?im)^content-length:\s*(\d+)", head)
                    conn["status"] = head.split(" ", 2)[1] if " " in head else "?"
                    conn["need"] = end + 4 + int(m.group(1)) if m else -1
            done = (conn["need"] is not None and conn["need"] >= 0 and len(buf) >= conn["need"]) or (
                not chunk and conn["need"] == -1
            )
            if done:
                last_done = time.perf_counter()
                latencies.append((last_done - conn["t0"]) * 1000)
                statuses[conn["status"]] = statuses.get(conn["status"], 0) + 1
                sel.unregister(s)
                s.close()
                pending -= 1
            elif not chunk:
                fail(conn, "closed early")
    if pending:
        errors["timeout"] = pending
        for k in list(sel.get_map().values()):
            k.fileobj.close()
    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))], 1)

    print(
        json.dumps(
            {
                "n": n,
                "answered": len(latencies),
                "statuses": statuses,
                "errors": errors,
                "connect_spread_ms": round(spread_ms, 1),
                "span_ms": round((last_done - started) * 1000, 1),
                "p50_ms": pct(50),
                "p90_ms": pct(90),
                "p99_ms": pct(99),
                "max_ms": round(latencies[-1], 1) if latencies else None,
            }
        )
    )


# ---------------------------------------------------------------- rss


def tree(pid):
    """PID and all its descendants (from /proc/*/stat)."""
    children = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu(pids):
    """User + system CPU seconds of PIDs and their descendants (utime and stime of each)."""
    ticks = 0
    for root in pids:
        for p in tree(int(root)):
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    print(ticks / os.sysconf("SC_CLK_TCK"))


def rss(pids):
    hwm = cur = 0
    for root in pids:
        for p in tree(int(root)):
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        cur += int(line.split()[1])
            except OSError:
                pass
    print(hwm, cur)


# ---------------------------------------------------------------- report


def ms(value):
    """wrk latency text ("470.00us", "1.23ms", "2.00s") -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(path):
    text = Path(path).read_text()
    out = {"rps": None, "p50": None, "p99": None, "non2xx": 0, "socket_errors": 0, "cpu_us": None}
    m = re.search(r"(\d+) requests in", text)
    cpu_file = Path(str(path) + ".cpu")
    if m and cpu_file.exists() and int(m.group(1)) > 0:
        out["cpu_us"] = float(cpu_file.read_text()) / int(m.group(1)) * 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[key] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    return out


def read_tsv(path):
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rows.append(line.split("\t"))
    return rows


def mib(kib):
    return f"{int(kib) / 1024:.1f}"


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def report(out):
    out = Path(out)
    lines = []
    meta = out / "meta.txt"
    if meta.exists():
        lines += ["```", meta.read_text().strip(), "```", ""]

    # wrk rounds, grouped by scenario and system (in first-seen order).
    groups = {}
    for f in sorted((out / "wrk").glob("*.r*.txt"), key=lambda p: p.stat().st_mtime):
        scen, system, _round = f.stem.split(".")
        groups.setdefault(scen, {}).setdefault(system, []).append(parse_wrk(f))
    rss_rows = read_tsv(out / "rss.tsv")  # scenario, system, when, hwm_kib, rss_kib
    rss_by = {(r[0], r[1], r[2]): r for r in rss_rows}
    medians = {}
    cpu_eff = {}  # requests per CPU-second of the system's processes
    for scen, systems in groups.items():
        lines.append(f"### {scen}: wrk, {len(next(iter(systems.values())))} interleaved rounds")
        lines.append("")
        lines.append(
            "| system | median req/s | rounds req/s | p50 ms | p99 ms | CPU µs/req | req per CPU-s | peak RSS MiB | RSS now MiB | errors |"
        )
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for system, runs in systems.items():
            rps = [r["rps"] for r in runs if r["rps"] is not None]
            med = statistics.median(rps) if rps else None
            medians[(scen, system)] = med
            p50 = statistics.median([r["p50"] for r in runs if r["p50"] is not None] or [0])
            p99 = statistics.median([r["p99"] for r in runs if r["p99"] is not None] or [0])
            errs = sum(r["non2xx"] + r["socket_errors"] for r in runs)
            cpus = [r["cpu_us"] for r in runs if r["cpu_us"] is not None]
            cpu_us = statistics.median(cpus) if cpus else None
            per_cpu_s = 1e6 / cpu_us if cpu_us else None
            cpu_eff[(scen, system)] = per_cpu_s
            r = rss_by.get((scen, system, "after"))
            lines.append(
                f"| {system} | {fmt(med, 0)} | {' / '.join(f'{x:.0f}' for x in rps)} | {p50:.3f} | {p99:.3f} | {fmt(cpu_us, 1)} | {fmt(per_cpu_s, 0)} "
                f"| {mib(r[3]) if r else '–'} | {mib(r[4]) if r else '–'} | {errs} |"
            )
        lines.append("")
        ratios = []
        gw = medians.get((scen, "gateway"))
        nginx = [medians.get((scen, s)) for s in ("nginx-1w", "nginx-2w")]
        nginx = [x for x in nginx if x]
        if gw and nginx:
            ratios.append(f"gateway / best nginx = {gw / max(nginx):.2f}")
        if gw and medians.get((scen, "bare-hyper")):
            ratios.append(f"gateway / bare hyper = {gw / medians[(scen, 'bare-hyper')]:.2f}")
        if gw and medians.get((scen, "varnish")):
            ratios.append(f"gateway / varnish = {gw / medians[(scen, 'varnish')]:.2f}")
        if gw and medians.get((scen, "gateway-minimal")):
            ratios.append(
                f"gateway-minimal (profile + rate) / gateway = {medians[(scen, 'gateway-minimal')] / gw:.3f}"
            )
        if gw and medians.get((scen, "gateway-accesslog")):
            ratios.append(
                f"gateway-accesslog / gateway = {medians[(scen, 'gateway-accesslog')] / gw:.3f}"
            )
        gw_tls = medians.get((scen, "gateway-tls"))
        if gw_tls and medians.get((scen, "nginx-2w-tls")):
            ratios.append(f"gateway-tls / nginx-2w-tls = {gw_tls / medians[(scen, 'nginx-2w-tls')]:.2f}")
        if gw_tls and gw:
            ratios.append(f"gateway-tls / gateway = {gw_tls / gw:.3f}")
        if medians.get((scen, "nginx-2w-tls")) and medians.get((scen, "nginx-2w")):
            ratios.append(
                f"nginx-2w-tls / nginx-2w = {medians[(scen, 'nginx-2w-tls')] / medians[(scen, 'nginx-2w')]:.3f}"
            )
        for base in ("gateway-baseline", "gateway-baseline-accesslog"):
            new = base.replace("-baseline", "")
            if medians.get((scen, base)) and medians.get((scen, new)):
                ratios.append(f"{new} / {base} = {medians[(scen, new)] / medians[(scen, base)]:.3f}")
        if ratios:
            lines += ["Ratios (same run, medians): " + "; ".join(ratios) + ".", ""]
        eff = []
        g = cpu_eff.get((scen, "gateway"))
        for other in ("bare-hyper", "nginx-1w", "nginx-2w", "gateway-baseline"):
            if g and cpu_eff.get((scen, other)):
                eff.append(f"gateway / {other} = {g / cpu_eff[(scen, other)]:.2f}")
        for a, b in (("gateway-minimal", "gateway"), ("gateway-accesslog", "gateway")):
            if cpu_eff.get((scen, a)) and cpu_eff.get((scen, b)):
                eff.append(f"{a} / {b} = {cpu_eff[(scen, a)] / cpu_eff[(scen, b)]:.3f}")
        if eff:
            lines += ["Requests per CPU-second, ratios: " + "; ".join(eff) + ".", ""]
        # Paired: the ratio within each round (systems of one round ran seconds apart), then
        # the median over rounds; steadier than a ratio of medians on a host whose speed drifts.
        paired = []
        pairs = [("gateway", o) for o in ("bare-hyper", "nginx-1w", "nginx-2w", "varnish", "gateway-baseline")]
        pairs += [("gateway-minimal", "gateway"), ("gateway-accesslog", "gateway"),
                  ("gateway-baseline-accesslog", "gateway-baseline"), ("gateway-accesslog", "gateway-baseline-accesslog")]
        for a_sys, b_sys in pairs:
            ra, rb = systems.get(a_sys), systems.get(b_sys)
            if not ra or not rb:
                continue
            rps = [x["rps"] / y["rps"] for x, y in zip(ra, rb) if x["rps"] and y["rps"]]
            cpu = [y["cpu_us"] / x["cpu_us"] for x, y in zip(ra, rb) if x["cpu_us"] and y["cpu_us"]]
            if rps:
                text = f"{a_sys} / {b_sys} = {statistics.median(rps):.3f} req/s"
                if cpu:
                    text += f", {statistics.median(cpu):.3f} req per CPU-s"
                paired.append(text)
        if paired:
            lines += ["Paired per round (median of the rounds' ratios): " + "; ".join(paired) + ".", ""]

    if rss_rows:
        lines.append("### Memory (VmHWM = peak RSS, VmRSS = RSS at that moment; summed over a system's processes)")
        lines.append("")
        lines.append("| scenario | system | when | peak RSS MiB | RSS MiB |")
        lines.append("|---|---|---|---:|---:|")
        for r in rss_rows:
            lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {mib(r[3])} | {mib(r[4])} |")
        lines.append("")

    up = read_tsv(out / "upstream.tsv")  # scenario, system, calls, seconds, note
    if up:
        lines.append("### Upstream calls")
        lines.append("")
        lines.append("| scenario | system | upstream calls | over | note |")
        lines.append("|---|---|---:|---:|---|")
        for r in up:
            if r[0] == "s4":
                continue
            lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4] if len(r) > 4 else ''} |")
        lines.append("")

    storm_calls = {r[1]: r[2] for r in up if r[0] == "s4"}
    storms = sorted(out.glob("storm.*.json"), key=lambda p: p.stat().st_mtime)
    if storms:
        lines.append("### s4: cold storm (each request on a new connection, timed from connect)")
        lines.append("")
        lines.append(
            "| system | requests | answered | statuses | upstream calls | p50 ms | p99 ms | max ms "
            "| first connect → last answer ms | connect spread ms | errors |"
        )
        lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for f in storms:
            d = json.loads(f.read_text())
            lines.append(
                f"| {f.stem.split('.', 1)[1]} | {d['n']} | {d['answered']} | {d['statuses']} | "
                f"{storm_calls.get(f.stem.split('.', 1)[1], '–')} | {d['p50_ms']} | {d['p99_ms']} | {d['max_ms']} | "
                f"{d.get('span_ms', '–')} | {d['connect_spread_ms']} | {d['errors'] or ''} |"
            )
        lines.append("")
    lines += profile_summary(out)
    print("\n".join(lines))


def profile_summary(out):
    """Per profiled system: CPU time, context switches and system calls per request (perf
    stat), and where the CPU time goes by shared object (perf record)."""
    rows = []
    for system in ("gateway", "bare-hyper"):
        stat = out / f"perf-{system}-stat.txt"
        wrk = out / "logs" / f"perf-stat.{system}.txt"
        if not (stat.exists() and wrk.exists()):
            continue
        text = stat.read_text()

        def count(event):
            m = re.search(rf"^\s*([\d,.]+)\s+(?:msec\s+)?{re.escape(event)}\b", text, re.M)
            return float(m.group(1).replace(",", "")) if m else None

        secs = re.search(r"([\d.]+) seconds time elapsed", text)
        rps = parse_wrk(wrk)["rps"]
        if not (secs and rps):
            continue
        reqs = rps * float(secs.group(1))
        task_ms, cs, sc = count("task-clock"), count("context-switches"), count("raw_syscalls:sys_enter")
        split = {}
        dso = out / f"perf-{system}-dso.txt"
        if dso.exists():
            for line in dso.read_text().splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
                if m:
                    split[m.group(2)] = float(m.group(1))
        kernel = split.get("[kernel.kallsyms]")
        cpu_us = task_ms * 1000 / reqs if task_ms else None
        rows.append(
            f"| {system} | {rps:.0f} | {fmt(cpu_us, 1)} | "
            f"{fmt(cpu_us * kernel / 100 if cpu_us and kernel is not None else None, 1)} | "
            f"{fmt(cpu_us * (100 - kernel) / 100 if cpu_us and kernel is not None else None, 1)} | "
            f"{fmt(cs / reqs if cs else None, 3)} | {fmt(sc / reqs if sc else None, 2)} |"
        )
    if not rows:
        return []
    return [
        "### Hit-path profile (perf, gateway vs bare hyper under the same wrk load)",
        "",
        "| system | req/s while measured | CPU µs/req | kernel µs/req | user µs/req | context switches/req | syscalls/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Top symbols: perf-<system>-self.txt (self time) and perf-<system>-children.txt (inclusive).",
        "",
    ]


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "render":
        render(args[0], args[1], args[2:])
    elif cmd == "clients":
        clients(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else None)
    elif cmd == "storm":
        opts = dict(zip(args[::2], args[1::2]))
        storm(
            int(opts["--port"]),
            opts["--path"],
            opts["--key"],
            int(opts["-n"]),
            float(opts.get("--timeout", "30")),
        )
    elif cmd == "cpu":
        cpu(args)
    elif cmd == "rss":
        rss(args)
    elif cmd == "report":
        report(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
