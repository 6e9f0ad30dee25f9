#!/usr/bin/env python3
"""The fenced store of the fault-injection run (scripts/chaos).

    chaos_store.py PORT_FILE HISTORY

Listens on a free 127.0.0.1 port (written to PORT_FILE once listening). A
client sends "W <client> <resource> <token>\\n"; the store accepts the write
only if the token is strictly greater than the last accepted one for that
resource, answers "OK\\n" or "REJECT <last>\\n", and appends every attempt to
HISTORY as one JSON line: client, resource, token, accepted, last, and
CLOCK_MONOTONIC / wall times. One thread, so attempts are totally ordered.
Runs until killed (SIGTERM).
"""
import json
import selectors
import signal
import socket
import sys
import time


def main():
    port_file, history = sys.argv[1], sys.argv[2]
    last = {}
    out = open(history, "a", buffering=1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    buffers = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is srv:
                c, _ = srv.accept()
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(c, selectors.EVENT_READ)
                buffers[c] = b""
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                buffers.pop(s, None)
                s.close()
                continue
            buffers[s] += data
            while b"\n" in buffers[s]:
                line, buffers[s] = buffers[s].split(b"\n", 1)
                parts = line.decode().split()
                if len(parts) != 4 or parts[0] != "W":
                    s.sendall(b"ERROR\n")
                    continue
                _, client, resource, token = parts
                token = int(token)
                prev = last.get(resource)
                ok = prev is None or token > prev
                if ok:
                    last[resource] = token
                out.write(json.dumps({"client": client, "resource": resource, "token": token, "accepted": ok,
                                      "last": prev, "mono": time.monotonic(), "wall": time.time()}) + "\n")
                s.sendall(b"OK\n" if ok else f"REJECT {prev}\n".encode())


if __name__ == "__main__":
    main()
