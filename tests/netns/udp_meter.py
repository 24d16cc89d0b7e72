#!/usr/bin/env python3
"""UDP measurements across tests/netns.rs's firewall, independent of turnpike:
the premises of its accuracy scenarios (that the firewall's impairments are
the figures the check must find).

    udp_meter.py serve ADDR:PORT...     prints "ready", then answers:
        b"E" + tos    echo, the reply marked with IP TOS `tos`
        b"Q"          the count, duration (first to last) and bytes of what
                      this source sent, Q aside (b"count=N dur=S bytes=B")
        b"L" + secs   the same datagram back after `secs` seconds
        b"T" + n,kbps n 1200-byte datagrams paced at kbps
        b"M"          the source address seen ("ip:port")
        b"R"          the TOS byte the request arrived with ("tos=N")

    udp_meter.py loss DST N PPS         {"sent", "received_up", "received_down"}
    udp_meter.py rate up|down DST KBPS SECS
                                        {"sent", "received", "kbps"}: the UDP
                                        payload rate by the receiver's dispersion
    udp_meter.py tos DST                {"up": [seen], "down": [seen]} for EF, AF41
    udp_meter.py map DST...             {"mapped": ["ip:port", ...]} from one socket
    udp_meter.py idle DST SECS          {"kept_unreplied", "lost_unreplied",
                                        "lost_stream"}: replies after SECS - 2 and
                                        SECS + 2 seconds of silence, on a fresh
                                        flow and one that has been answered for
                                        3 s (conntrack's stream state)

Each client line is one JSON object on standard output.
"""

import json
import select
import socket
import struct
import sys
import threading
import time

CLIENT = "10.77.1.2"
EF, AF41 = 46 << 2, 34 << 2


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def udp(bind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(bind)
    return s


def serve(binds):
    socks = [udp(addr(b)) for b in binds]
    stats = {}
    print("ready", flush=True)

    def later(s, secs, src, data):
        time.sleep(secs)
        s.sendto(data, src)

    def train(s, n, kbps, src):
        gap = 9600 / (kbps * 1000)
        start = time.monotonic()
        for i in range(n):
            while time.monotonic() < start + i * gap:
                pass
            s.sendto(b"D" + b"x" * 1199, src)

    while True:
        ready, _, _ = select.select(socks, [], [])
        for s in ready:
            data, anc, _, src = s.recvmsg(2048, 64)
            tos = next((d[0] for lvl, typ, d in anc if typ == socket.IP_TOS), None)
            now = time.monotonic()
            kind = data[:1]
            if kind == b"Q":
                n, first, last, size = stats.get(src, (0, 0, 0, 0))
                s.sendto(b"count=%d dur=%f bytes=%d" % (n, last - first, size), src)
                continue
            n, first, _, size = stats.get(src, (0, now, now, 0))
            stats[src] = (n + 1, first, now, size + len(data))
            if kind == b"E":
                s.sendmsg([data], [(socket.IPPROTO_IP, socket.IP_TOS, struct.pack("i", data[1]))], 0, src)
            elif kind == b"L":
                args = (s, float(data[1:].split(b" ")[0]), src, data)
                threading.Thread(target=later, args=args, daemon=True).start()
            elif kind == b"T":
                n, kbps = data[1:].split(b" ")[0].split(b",")
                args = (s, int(n), float(kbps), src)
                threading.Thread(target=train, args=args, daemon=True).start()
            elif kind == b"M":
                s.sendto(b"%s:%d" % (src[0].encode(), src[1]), src)
            elif kind == b"R":
                s.sendto(b"tos=%d" % tos, src)


def ask(s, dst, request, prefix):
    """Sends `request` until an answer starting with `prefix` comes."""
    s.settimeout(1)
    for _ in range(10):
        s.sendto(request, dst)
        try:
            while True:
                answer = s.recv(2048)
                if answer.startswith(prefix):
                    return answer.decode()
        except socket.timeout:
            pass
    raise SystemExit("no answer to %r from %s" % (request, dst))


def counts(s, dst):
    fields = dict(f.split("=") for f in ask(s, dst, b"Q", b"count=").split())
    return int(fields["count"]), float(fields["dur"]), int(fields["bytes"])


def drain(s, until):
    got = 0
    while True:
        try:
            s.recv(2048)
            got += 1
        except BlockingIOError:
            if time.monotonic() >= until:
                return got
            time.sleep(0.0005)


def loss(dst, n, pps):
    s = udp((CLIENT, 0))
    s.setblocking(False)
    got = 0
    start = time.monotonic()
    for i in range(n):
        got += drain(s, start + i / pps)
        s.sendto(b"E\x00" + b"x" * 158, dst)
    got += drain(s, time.monotonic() + 1)
    received, _, _ = counts(s, dst)
    return {"sent": n, "received_up": received, "received_down": got}


def rate(way, dst, kbps, secs):
    s = udp((CLIENT, 0))
    n = int(kbps * 1000 * secs / 9600)
    if way == "up":
        gap = 9600 / (kbps * 1000)
        start = time.monotonic()
        for i in range(n):
            while time.monotonic() < start + i * gap:
                pass
            s.sendto(b"S" + b"x" * 1199, dst)
        time.sleep(0.5)
        received, dur, size = counts(s, dst)
        # The first datagram's arrival starts the clock: its bytes are not
        # in the rate.
        return {"sent": n, "received": received, "kbps": (size - 1200) * 8 / dur / 1000}
    s.sendto(b"T%d,%f" % (n, kbps), dst)
    s.settimeout(1)
    received, first, last = 0, None, None
    try:
        while True:
            s.recv(2048)
            last = time.monotonic()
            first = first or last
            received += 1
    except socket.timeout:
        pass
    return {"sent": n, "received": received, "kbps": (received - 1) * 9.6 / (last - first)}


def tos(dst):
    s = udp((CLIENT, 0))
    up, down = [], []
    for mark in (EF, AF41):
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, mark)
        up.append(int(ask(s, dst, b"R", b"tos=")[4:]) >> 2)
        s.settimeout(1)
        s.sendto(b"E" + bytes([mark]), dst)
        _, anc, _, _ = s.recvmsg(2048, 64)
        down.append(next(d[0] for lvl, typ, d in anc if typ == socket.IP_TOS) >> 2)
    return {"up": up, "down": down}


def mapped(dsts):
    s = udp((CLIENT, 0))
    return {"mapped": [ask(s, dst, b"M", b"") for dst in dsts]}


def idle(dst, secs):
    result = {}

    def flow(name, answered_first, wait):
        s = udp((CLIENT, 0))
        if answered_first:
            # Answered, and still going after 2 s: conntrack's stream state.
            for _ in range(4):
                ask(s, dst, b"E\x00", b"E")
                time.sleep(1)
        s.settimeout(wait + 3)
        s.sendto(b"L%f" % wait, dst)
        try:
            s.recv(2048)
            result[name] = True
        except socket.timeout:
            result[name] = False

    flows = [
        threading.Thread(target=flow, args=("kept_unreplied", False, secs - 2)),
        threading.Thread(target=flow, args=("lost_unreplied", False, secs + 2)),
        threading.Thread(target=flow, args=("lost_stream", True, secs + 2)),
    ]
    for f in flows:
        f.start()
    for f in flows:
        f.join()
    return result


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(args)
        return
    if mode == "loss":
        out = loss(addr(args[0]), int(args[1]), float(args[2]))
    elif mode == "rate":
        out = rate(args[0], addr(args[1]), float(args[2]), float(args[3]))
    elif mode == "tos":
        out = tos(addr(args[0]))
    elif mode == "map":
        out = mapped([addr(a) for a in args])
    elif mode == "idle":
        out = idle(addr(args[0]), float(args[1]))
    else:
        raise SystemExit("unknown mode " + mode)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
