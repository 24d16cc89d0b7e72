"""A delaying UDP middlebox for tests/netns.rs: what nftables redirects to
it from the client, it sends on to one target after DELAY_MS, and the
target's replies back to the client after DELAY_MS again, so a round trip
through it takes 2 * DELAY_MS more.

Each client source address gets an upstream socket of its own, as a NAT
gives it a mapping, for at most MAX_SOURCES sources (datagrams from more
are dropped). Datagrams go on unchanged, whatever their size. Each one is
due DELAY_MS after it was read; one loop sends what is due, in the order
it arrived, and sleeps in select() until the next is due (microseconds,
not the milliseconds of epoll's timeout), so the delay does not drift
with the traffic.

Usage: python3 delay_proxy.py LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT
                              DELAY_MS [MAX_SOURCES]
Prints "listening" once it receives; runs until killed.
"""

import collections
import selectors
import socket
import sys
import time

# Datagrams waiting, at most: a second of 10 000 packets/s, far over what
# the check sends.
MAX_QUEUED = 10000


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.setblocking(False)
    return s


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(
            "usage: delay_proxy.py LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT "
            "DELAY_MS [MAX_SOURCES]"
        )
    listen = (sys.argv[1], int(sys.argv[2]))
    target = (sys.argv[3], int(sys.argv[4]))
    delay = float(sys.argv[5]) / 1000.0
    max_sources = int(sys.argv[6]) if len(sys.argv) == 7 else 64

    front = udp()
    front.bind(listen)
    # select(), not epoll: its timeout has microseconds.
    sel = selectors.SelectSelector()
    sel.register(front, selectors.EVENT_READ, None)
    # Client address -> its upstream socket.
    upstream = {}
    # (due, send) in arrival order: one delay for all, so also due order.
    queue = collections.deque()
    print("listening", flush=True)

    def read(sock, client):
        # Everything waiting on `sock`: from clients on the front socket
        # (client None), from the target on a client's upstream socket.
        while True:
            try:
                data, src = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                # An ICMP error for an earlier datagram: nothing to forward.
                continue
            due = time.monotonic() + delay
            if len(queue) >= MAX_QUEUED:
                continue
            if client is None:
                up = upstream.get(src)
                if up is None:
                    if len(upstream) >= max_sources:
                        continue
                    up = udp()
                    up.connect(target)
                    sel.register(up, selectors.EVENT_READ, src)
                    upstream[src] = up
                queue.append((due, up.send, data, None))
            else:
                queue.append((due, front.sendto, data, client))

    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, send, data, to = queue.popleft()
            try:
                if to is None:
                    send(data)
                else:
                    send(data, to)
            except OSError:
                # A full buffer or an ICMP error: lost, as on a wire.
                pass
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        for key, _ in sel.select(timeout):
            read(key.fileobj, key.data)


main()
