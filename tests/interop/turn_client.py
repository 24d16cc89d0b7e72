"""An independent TURN client for the interop tests: aioice's, over UDP.

Allocates on --server, sends --count datagrams of --size bytes to --peer (a
UDP echo peer) through the relay, and counts the echoes that come back.
Prints one JSON line {"relayed": "ip:port", "sent": N, "received": M} and
exits 0 only when every datagram came back, within --timeout seconds.

What aioice 0.10.1 does on the wire (aioice/turn.py), and so what this
exercises on the server:
  - Allocate with REQUESTED-TRANSPORT UDP and LIFETIME 600; the first
    request goes without credentials, and on 401 it takes REALM and NONCE
    from the answer and signs with MESSAGE-INTEGRITY (MD5 long-term key).
  - The first datagram to a peer sends ChannelBind (channel 0x4000), which
    also installs the permission; aioice never sends CreatePermission.
  - Data goes as ChannelData both ways, never as Send indications; aioice
    drops Data indications it receives, so an echo that the server relayed
    as a Data indication would count as lost here.
  - Closing sends Refresh with LIFETIME 0, so the allocation ends at the
    client's request rather than at the server's shutdown.

With --rest-secret, the credentials are made here, independently of the
server: user name "<unix expiry>:<--username>", password
base64(HMAC-SHA1(secret, user name)) (the TURN REST API draft).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import struct
import sys
import time

from aioice.turn import create_turn_endpoint

# How many datagrams may be on their way at once: enough to keep the relay
# busy, few enough that no socket buffer on loopback overflows.
WINDOW = 16


def host_port(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def rest_credentials(secret, user, ttl=3600):
    username = f"{int(time.time()) + ttl}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class Echoes(asyncio.DatagramProtocol):
    """Collects the sequence numbers of the echoes that match what was sent."""

    def __init__(self, peer, size):
        self.peer = peer
        self.size = size
        self.received = set()
        self.unexpected = 0
        self.arrived = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if (addr[0], addr[1]) != self.peer or len(data) != self.size:
            self.unexpected += 1
        else:
            (seq,) = struct.unpack_from("!I", data)
            if data == payload(seq, self.size):
                self.received.add(seq)
            else:
                self.unexpected += 1
        self.arrived.set()

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)


def payload(seq, size):
    head = struct.pack("!I", seq)
    body = bytes((seq + i) & 0xFF for i in range(size - len(head)))
    return head + body


async def run(args):
    server = host_port(args.server)
    peer = host_port(args.peer)
    if args.rest_secret is not None:
        username, password = rest_credentials(args.rest_secret, args.username)
    else:
        username, password = args.username, args.password

    transport, echoes = await create_turn_endpoint(
        lambda: Echoes(peer, args.size),
        server_addr=server,
        username=username,
        password=password,
        transport="udp",
    )
    relayed = transport.get_extra_info("sockname")
    sent = 0
    try:
        # Send in a window: a datagram goes out when an earlier one came back.
        # No retransmission: every loss shows.
        while sent < args.count:
            while sent < args.count and sent - len(echoes.received) < WINDOW:
                transport.sendto(payload(sent, args.size), peer)
                sent += 1
            echoes.arrived.clear()
            try:
                await asyncio.wait_for(echoes.arrived.wait(), timeout=2)
            except asyncio.TimeoutError:
                break
        while len(echoes.received) < sent:
            echoes.arrived.clear()
            try:
                await asyncio.wait_for(echoes.arrived.wait(), timeout=2)
            except asyncio.TimeoutError:
                break
    finally:
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(echoes.closed), timeout=5)
        except asyncio.TimeoutError:
            print("warning: the allocation was not deleted in time", file=sys.stderr)
    return relayed, sent, echoes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="TURN server HOST:PORT (UDP)")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", help="static password (or --rest-secret)")
    parser.add_argument(
        "--rest-secret", help="make REST API credentials for --username with this secret"
    )
    parser.add_argument("--peer", required=True, help="UDP echo peer HOST:PORT")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30, help="seconds for everything")
    args = parser.parse_args()
    if (args.password is None) == (args.rest_secret is None):
        parser.error("give exactly one of --password and --rest-secret")
    if args.size < 4:
        parser.error("--size must be at least 4 (a sequence number)")

    try:
        relayed, sent, echoes = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(json.dumps({"error": f"timed out after {args.timeout} s"}))
        return 1
    except Exception as e:  # noqa: BLE001 - the test wants the reason on stdout
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    received = len(echoes.received)
    print(
        json.dumps(
            {
                "relayed": f"{relayed[0]}:{relayed[1]}",
                "sent": sent,
                "received": received,
                "unexpected": echoes.unexpected,
            }
        ),
        flush=True,
    )
    return 0 if received == sent == args.count and echoes.unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
