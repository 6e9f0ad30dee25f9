#!/usr/bin/env python3
"""The checker can fail: synthetic histories with each defect it must catch.

    chaos_check_test.py   (ctest chaos_check_selftest)
"""
import json
import os
import subprocess
import sys
import tempfile

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chaos_check.py")


def section(client, seq, token, t, write, release="released", signals=""):
    ev = lambda e, dt, **kw: dict(client=client, ev=e, mono=t + dt, wall=t + dt, seq=seq, **kw)
    return [ev("enter", 0, token=token), ev("write", 0.001, token=token, result=write),
            ev("exit", 0.002, token=token), ev("release", 0.003, token=token, result=release, signals=signals)]


def scenario(root, name, c0, c1, store, held=0):
    d = os.path.join(root, name)
    os.makedirs(d)
    for i, evs in enumerate((c0, c1)):
        with open(os.path.join(d, f"client-{i}.jsonl"), "w") as f:
            for e in evs + [dict(client=f"c{i}", ev="done", mono=99, wall=99, writes=len(evs) // 4)]:
                f.write(json.dumps(e) + "\n")
    with open(os.path.join(d, "store.jsonl"), "w") as f:
        for client, token, ok in store:
            f.write(json.dumps(dict(client=client, resource="chaos", token=token, accepted=ok, last=None, mono=0,
                                    wall=0)) + "\n")
    with open(os.path.join(d, "run.json"), "w") as f:
        f.write(json.dumps(dict(scenario=name, backend="redis", cycles=1, client_rc=0, held_at_end=held,
                                held_after_ttl=held, start=0, end=1)) + "\n")


def main():
    root = tempfile.mkdtemp(prefix="chaos-check-test.")
    ok_store = [("c0", 1, True), ("c1", 2, True)]
    # Clean: c1 pauses over c0's next section and is rejected, but was told (release not_held).
    scenario(root, "clean", section("c0", 1, 1, 1.0, "OK") + section("c0", 2, 3, 1.1, "OK"),
             section("c1", 1, 2, 1.05, "REJECT", release="not_held"),
             ok_store + [("c0", 3, True)])
    scenario(root, "unsignalled", section("c0", 1, 1, 1.0, "OK"), section("c1", 1, 2, 1.05, "REJECT"), ok_store)
    scenario(root, "out_of_order", section("c0", 1, 2, 1.0, "OK"), section("c1", 1, 1, 1.05, "OK"),
             [("c0", 2, True), ("c1", 1, True)])
    scenario(root, "left_locked", section("c0", 1, 1, 1.0, "OK"), section("c1", 1, 2, 1.05, "OK"), ok_store, held=1)
    scenario(root, "regression", section("c0", 1, 5, 1.0, "OK"), section("c1", 1, 4, 1.1, "OK"),
             [("c0", 5, True), ("c1", 4, False)])
    failed = 0
    for name, want in [("clean", 0), ("unsignalled", 1), ("out_of_order", 1), ("left_locked", 1), ("regression", 1)]:
        got = subprocess.run([sys.executable, CHECK, root, name], capture_output=True, text=True)
        print(f"{name}: exit {got.returncode} (want {want})")
        if got.returncode != want:
            print(got.stdout, got.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
