#!/usr/bin/env python3
"""The checker of the fault-injection run (scripts/chaos).

    chaos_check.py OUT_DIR SCENARIO... [--report FILE.md --plots DIR]

Reads each scenario's histories (OUT_DIR/SCENARIO/: store.jsonl from the fenced
store, client-*.jsonl from the clients, faults.jsonl and run.json from the
driver) and reports per scenario:
  * fenced writes accepted out of order (the store's accepted tokens must
    strictly increase; MUST be 0);
  * overlaps seen by the unfenced shadow: pairs of critical sections
    [enter, exit] of different clients that intersect on CLOCK_MONOTONIC, and
    how many of them had neither side signalled lost;
  * losses that happened (a fenced write the store rejected) and whether each
    was signalled to its client (stop_token, on_lost, release() == not_held or
    an error); unsignalled losses MUST be 0;
  * acquisitions, acquire failures and errors by kind;
  * locks left behind (held one TTL after the clients exited MUST be 0).
Exits 1 if any MUST fails. With --report, writes a markdown report and one
plot per scenario (gnuplot, pngcairo) of acquisitions and faults over time.
"""
import collections
import glob
import heapq
import json
import os
import subprocess
import sys


def load(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by SIGKILL
    return out


def check(d):
    store = load(os.path.join(d, "store.jsonl"))
    run = (load(os.path.join(d, "run.json")) or [{}])[0]
    faults = load(os.path.join(d, "faults.jsonl"))
    r = collections.OrderedDict()
    r["scenario"] = os.path.basename(d)
    r["backend"] = run.get("backend", "?")
    r["fault_cycles"] = run.get("cycles", 0)
    r["fenced_writes"] = len(store)
    r["accepted"] = sum(1 for w in store if w["accepted"])
    r["rejected"] = len(store) - r["accepted"]
    last = {}
    ooo = 0
    for w in store:
        if w["accepted"]:
            if w["resource"] in last and w["token"] <= last[w["resource"]]:
                ooo += 1
            last[w["resource"]] = w["token"]
    r["out_of_order_accepted"] = ooo

    sections = []  # (enter, exit, client, seq, token, signalled)
    errors = collections.Counter()
    acquisitions = acquire_failures = token_failures = 0
    rejected_unsignalled = []
    signalled = write_errors = 0
    clients_done = clients = 0
    for path in sorted(glob.glob(os.path.join(d, "client-*.jsonl"))):
        clients += 1
        open_ = {}
        for e in load(path):
            ev = e["ev"]
            if ev == "enter":
                acquisitions += 1
                open_[e["seq"]] = {"enter": e["mono"], "client": e["client"], "seq": e["seq"], "token": e["token"],
                                   "enter_wall": e["wall"]}
            elif ev == "write":
                if e["seq"] in open_:
                    open_[e["seq"]]["write"] = e["result"]
                if e["result"] == "ERROR":
                    write_errors += 1
            elif ev == "exit":
                if e["seq"] in open_:
                    open_[e["seq"]]["exit"] = e["mono"]
            elif ev == "release":
                s = open_.pop(e["seq"], None)
                if s is None:
                    continue
                res = e["result"]
                if res.startswith("error:"):
                    errors["release " + res[6:]] += 1
                sig = bool(e["signals"]) or res != "released"
                signalled += sig
                s["signalled"] = sig
                s["signals"] = e["signals"] + ("" if res == "released" else "release=" + res)
                sections.append(s)
                if s.get("write") == "REJECT" and not sig:
                    rejected_unsignalled.append(s)
            elif ev == "acquire_failed":
                acquire_failures += 1
                errors["acquire " + e["kind"]] += 1
            elif ev == "token_failed":
                token_failures += 1
                errors["token " + e["kind"]] += 1
            elif ev == "done":
                clients_done += 1
        for s in open_.values():  # a section cut short (the client was stopped mid-way): count it open to the end
            s.setdefault("exit", s["enter"])
            s["signalled"] = False
            s["signals"] = "unfinished"
            sections.append(s)
    r["clients"] = clients
    r["clients_done"] = clients_done
    r["acquisitions"] = acquisitions
    r["acquire_failures"] = acquire_failures
    r["token_failures"] = token_failures
    r["losses_happened"] = r["rejected"]
    r["losses_signalled"] = signalled
    r["unsignalled_losses"] = len(rejected_unsignalled)
    r["write_errors"] = write_errors
    r["errors"] = dict(errors)

    # Overlaps of the unfenced shadow: sweep by enter time.
    sections.sort(key=lambda s: s["enter"])
    active = []  # heap of (exit, index)
    overlaps = unexplained = 0
    for j, s in enumerate(sections):
        while active and active[0][0] <= s["enter"]:
            heapq.heappop(active)
        for _, i in active:
            o = sections[i]
            if o["client"] != s["client"]:
                overlaps += 1
                if not (o["signalled"] or s["signalled"]):
                    unexplained += 1
        heapq.heappush(active, (s.get("exit", s["enter"]), j))
    r["shadow_overlaps"] = overlaps
    r["overlaps_neither_signalled"] = unexplained
    # Tokens against real-time order: a section that entered after another one
    # exited, with a token not above it, and not signalled lost.
    by_exit = sorted(sections, key=lambda s: s["exit"])
    k, best, regressions = 0, -1, 0
    for s in sections:
        while k < len(by_exit) and by_exit[k]["exit"] < s["enter"]:
            best = max(best, by_exit[k]["token"])
            k += 1
        if s["token"] <= best and not s["signalled"]:
            regressions += 1
    r["token_regressions_unsignalled"] = regressions
    r["held_at_end"] = run.get("held_at_end", -1)
    r["held_after_ttl"] = run.get("held_after_ttl", -1)
    r["client_rc"] = run.get("client_rc", -1)
    r["seconds"] = round(run.get("end", 0) - run.get("start", 0), 1)
    failures = []
    if ooo:
        failures.append(f"{ooo} fenced writes accepted out of order")
    if rejected_unsignalled:
        s = rejected_unsignalled[0]
        failures.append(f"{len(rejected_unsignalled)} unsignalled losses (first: client {s['client']} seq {s['seq']} "
                        f"token {s['token']})")
    if r["held_after_ttl"] != 0:
        failures.append(f"{r['held_after_ttl']} locks left held one TTL after the run")
    if r["client_rc"] != 0 or clients_done != clients:
        failures.append(f"clients failed (rc {r['client_rc']}, {clients_done}/{clients} finished)")
    if regressions:
        failures.append(f"{regressions} unsignalled token regressions")
    r["failures"] = failures
    r["_sections"] = sections
    r["_faults"] = faults
    r["_store"] = store
    r["_start"] = run.get("start", 0)
    return r


def plot(r, png):
    """Acquisitions per 100 ms, rejected writes, and fault intervals over time."""
    t0 = r["_start"]
    base = png[:-4]
    bins = collections.Counter(int((s["enter_wall"] - t0) * 10) for s in r["_sections"])
    with open(base + ".acq.dat", "w") as f:
        for b in range(0, max(bins, default=0) + 1):
            f.write(f"{b / 10:.1f} {bins.get(b, 0)}\n")
    with open(base + ".rej.dat", "w") as f:
        for w in r["_store"]:
            if not w["accepted"]:
                f.write(f"{w['wall'] - t0:.3f} 0.5\n")
        f.write("-1 -1\n")  # gnuplot wants at least one point
    top = max(bins.values(), default=1) * 1.15 + 1
    objs = []
    starts = {}
    for ev in r["_faults"]:
        if ev["phase"] == "start":
            starts[ev["fault"]] = ev["wall"] - t0
        elif ev["fault"] in starts:
            a, b = starts.pop(ev["fault"]), ev["wall"] - t0
            b = max(b, a + 0.02)
            objs.append(f"set object rect from {a:.3f},0 to {b:.3f},{top:.1f} fc rgb '#f4a0a0' fs solid 0.5 noborder behind")
    script = "\n".join([
        "set terminal pngcairo size 900,300 font ',9' noenhanced",
        f"set output '{png}'",
        f"set title '{r['scenario']} ({r['backend']}): acquisitions per 100 ms; faults shaded; rejected writes x'",
        "set xlabel 'seconds'", "set ylabel 'acquisitions'", f"set yrange [0:{top:.1f}]", "set xrange [0:*]",
        "set key off", *objs,
        f"plot '{base}.acq.dat' with steps lc rgb '#1f77b4', '{base}.rej.dat' with points pt 2 lc rgb 'red'",
    ])
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    os.remove(base + ".acq.dat")
    os.remove(base + ".rej.dat")


# What each scenario does, and what its shadow overlaps (if any) rest on (docs/safety.md).
SCENARIOS = {
    "none": ("No faults: the baseline.", "No overlap is possible."),
    "redis_kill_empty": ("redis-server SIGKILLed and restarted at once, empty.",
                         "The holder's key is gone, so another client may acquire while the holder is still in its "
                         "critical section: the server forgot an acknowledged key (safety.md, \"Fencing tokens on "
                         "Redis\", case 3). Tokens still increase because the empty server's counter restarts at its "
                         "clock (TIME + 1)."),
    "redis_kill_data": ("`SAVE`, 300 ms of further grants, then SIGKILL and a restart from that stale snapshot.",
                        "As above, with counters restored *below* tokens already issued: the fence rule max(counter, "
                        "TIME) + 1 keeps tokens increasing (case 3, clock assumption)."),
    "redis_stop": ("redis-server SIGSTOPped for 2 x TTL, then SIGCONT.",
                   "Extensions fail; the heartbeat declares the loss when validity ends (safety.md, \"Validity and "
                   "clocks\"). Nobody else can acquire from a stopped server, so no overlap is expected."),
    "redis_fast_clock": ("redis-server whose wall clock, which Redis expires keys by, runs at twice the real rate "
                         "(Debian's libfaketime, `FAKETIME=\"+0 x2\"`); each fault cycle, a holder stops itself "
                         "(SIGSTOP) between its token and its write for 5/8 TTL: past its key's expiry on the fast "
                         "node, within its validity on its own clock.",
                         "Expected: overlaps. The key expires after TTL / 2 of real time, another client acquires, "
                         "and the paused holder resumes believing it still holds the lock. Assumption violated: "
                         "`RedisBackend` assumes the server's clock does not run faster than the client's over one "
                         "TTL (safety.md, \"Validity and clocks\"; the model's `redis-drift` counterexample). "
                         "Fencing still holds: the late write carries the older token and is rejected, and the loss "
                         "is signalled (at the latest, its release() returns not_held). With a normal clock the same "
                         "pause costs nothing (it ends within both validities)."),
    "client_pause": ("A holder stops itself with SIGSTOP between taking its token and writing (a GC pause), for "
                     "3 x TTL, heartbeat included; then SIGCONT.",
                     "Expected: the lease expires on the server, another client acquires, and the paused client "
                     "resumes still inside its critical section. Assumption violated: \"holders stop in time\" "
                     "(safety.md, \"What no lock service can promise\"; Redlock assumption 2). Its late write "
                     "must be rejected by the fenced store, and the loss must be signalled."),
    "proxy_reset": ("The client-server TCP connections are reset (RST) three times, 150 ms apart.",
                    "No overlap expected: a reset connection fails the call; the key stays until released or "
                    "expired."),
    "proxy_blackhole": ("The proxy forwards nothing for 2 x TTL (a partition; held bytes arrive after it).",
                        "No overlap expected: during the partition nobody reaches the server."),
    "proxy_delay": ("Replies to the clients delayed by TTL / 2 for 3 x TTL (one-way delay).",
                    "Validity is measured from before the request was sent, so a late grant only shortens it "
                    "(safety.md, \"Validity and clocks\")."),
    "redlock_minority": ("Redlock, 5 nodes, each through a proxy: 2 random nodes black-holed for 3 x TTL.",
                         "No overlap expected. A minority costs up to node_timeout (50 ms) per operation: the "
                         "acquire and the release each wait that long for the silent nodes, so acquisitions drop "
                         "to about one per 100 ms during the partition (plot). Not a defect: liveness as documented "
                         "(safety.md, Redlock, \"Liveness\")."),
    "redlock_majority": ("Redlock: 3 of 5 nodes black-holed for 3 x TTL.",
                         "No quorum: acquisitions fail, holders lose their lock (signalled) when validity ends; "
                         "no overlap expected."),
    "redlock_restart_empty": ("Redlock: one random node SIGKILLed and restarted at once, empty (no delayed restart).",
                              "Violates Redlock assumption 3 (\"nodes do not forget acknowledged keys\"): an overlap "
                              "is possible when the restarted node was the shared node of two quorums. Tokens still "
                              "increase through the fence raise and the clock floor."),
    "pg_terminate": ("PostgreSQL: every dlock session terminated with pg_terminate_backend.",
                     "The holder's session ends, the advisory lock with it; the holder learns of it at its next "
                     "extension (at most TTL / 3 later), so a short overlap is possible and must be signalled "
                     "(safety.md, \"PostgreSQL: sessions\")."),
    "pg_restart": ("PostgreSQL restarted (pg_ctl restart -m immediate).",
                   "As pg_terminate, for every session at once; the fencing sequence survives the restart."),
    "pg_client_pause": ("PostgreSQL: the GC pause of client_pause.",
                        "As client_pause: the server ends the silent session after the TTL (idle_session_timeout), "
                        "another client acquires, and the paused holder's write must be rejected and signalled."),
}

COLUMNS = ["scenario", "backend", "seconds", "fault_cycles", "fenced_writes", "acquisitions", "out_of_order_accepted",
           "shadow_overlaps", "overlaps_neither_signalled", "losses_happened", "losses_signalled",
           "unsignalled_losses", "acquire_failures", "held_at_end", "held_after_ttl"]


def write_report(results, report, plots):
    os.makedirs(plots, exist_ok=True)
    rel = os.path.relpath(plots, os.path.dirname(report))
    lines = []
    for r in results:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "-"
        lines.append("| " + " | ".join(str(r[c]) for c in COLUMNS) + f" | {errs} |")
    head = "| " + " | ".join(COLUMNS) + " | errors |\n|" + "---|" * (len(COLUMNS) + 1)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reliability.md.in")) as f:
        template = f.read()
    body = []
    for r in results:
        what, why = SCENARIOS.get(r["scenario"], ("", ""))
        plot(r, os.path.join(plots, r["scenario"] + ".png"))
        body.append(f"### {r['scenario']}\n\n{what}\n\n{r['fenced_writes']} fenced writes, {r['acquisitions']} "
                    f"acquisitions, {r['fault_cycles']} fault cycles in {r['seconds']} s; "
                    f"{r['out_of_order_accepted']} accepted out of order; {r['shadow_overlaps']} shadow overlaps "
                    f"({r['overlaps_neither_signalled']} with neither side signalled lost); "
                    f"{r['losses_happened']} rejected writes, {r['unsignalled_losses']} of them unsignalled; "
                    f"{r['losses_signalled']} acquisitions signalled lost in all.\n\n{why}\n\n"
                    f"![{r['scenario']}]({rel}/{r['scenario']}.png)\n")
    total = sum(r["fenced_writes"] for r in results)
    text = template.replace("@TABLE@", head + "\n" + "\n".join(lines)).replace("@SCENARIOS@", "\n".join(body))
    text = text.replace("@TOTAL@", f"{total:,}").replace("@MIN@", f"{min(r['fenced_writes'] for r in results):,}")
    with open(report, "w") as f:
        f.write(text)


def main():
    args = sys.argv[1:]
    report = plots = None
    if "--report" in args:
        i = args.index("--report")
        report = args[i + 1]
        del args[i:i + 2]
    if "--plots" in args:
        i = args.index("--plots")
        plots = args[i + 1]
        del args[i:i + 2]
    out, scenarios = args[0], args[1:]
    results = [check(os.path.join(out, s)) for s in scenarios]
    bad = False
    print(" | ".join(COLUMNS))
    for r in results:
        print(" | ".join(str(r[c]) for c in COLUMNS), "| errors:", r["errors"] or "-")
    for r in results:
        for f in r["failures"]:
            print(f"chaos_check: FAIL {r['scenario']}: {f}")
            bad = True
    if report:
        write_report(results, report, plots)
        print(f"chaos_check: report written: {report}, plots in {plots}")
    print("chaos_check:", "FAILED" if bad else "passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
