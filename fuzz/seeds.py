#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/seeds/<target>/.

Deterministic: running it again writes the same files. The seeds are
messages a TURN server meets (the RFC 5769 test vectors, requests and
answers of every TURN method, signed and unsigned, ChannelData, TCP
streams of several messages), configuration files and requirement
profiles; the fuzzer mutates from there.
"""

import hashlib
import hmac
import os
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds")
COOKIE = 0x2112A442
REALM = b"turnpike.test"


def hexbytes(s):
    return bytes.fromhex("".join(s.split()))


RFC5769 = {
    "rfc5769-request": """
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
        00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf""",
    "rfc5769-response-v4": """
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 08 00 01 a1 47 e1 12 a6 43
        00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
        80 28 00 04 c0 7d 4c 96""",
    "rfc5769-response-v6": """
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
        80 28 00 04 c8 fb 0b 4c""",
    "rfc5769-long-term": """
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
        00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
        53 54 76 79 36 34 73 41
        00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
        00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""",
}

# Methods and classes (RFC 8489 §5, RFC 8656 §17, RFC 6062 §6.1).
BINDING, ALLOCATE, REFRESH, SEND, DATA = 0x001, 0x003, 0x004, 0x006, 0x007
CREATE_PERMISSION, CHANNEL_BIND = 0x008, 0x009
CONNECT, CONNECTION_BIND = 0x00A, 0x00B
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3


def msg_type(method, cls):
    m = method
    return (
        (m & 0x000F)
        | ((m & 0x0070) << 1)
        | ((m & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def attr(typ, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def xor_addr(ip4, port):
    a = bytes(int(x) for x in ip4.split("."))
    x = struct.unpack("!I", a)[0] ^ COOKIE
    return struct.pack("!BBHI", 0, 1, port ^ (COOKIE >> 16), x)


def xor_addr6(ip6_bytes, port, tid):
    mask = struct.pack("!I", COOKIE) + tid
    x = bytes(b ^ m for b, m in zip(ip6_bytes, mask))
    return struct.pack("!BBH", 0, 2, port ^ (COOKIE >> 16)) + x


def message(method, cls, tid, attrs, key=None, fingerprint=False, sha256=False):
    body = b"".join(attrs)
    typ = msg_type(method, cls)
    if key is not None:
        mi_len = 32 if sha256 else 20
        header = struct.pack("!HHI", typ, len(body) + 4 + mi_len, COOKIE) + tid
        digest = hmac.new(key, header + body, hashlib.sha256 if sha256 else hashlib.sha1).digest()
        body += attr(0x001C if sha256 else 0x0008, digest)
    if fingerprint:
        header = struct.pack("!HHI", typ, len(body) + 8, COOKIE) + tid
        crc = (zlib.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", typ, len(body), COOKIE) + tid + body


def stun_seeds():
    key = hashlib.md5(b"alice:" + REALM + b":wonderland").digest()
    key256 = hashlib.sha256(b"alice:" + REALM + b":wonderland").digest()
    creds = [
        attr(0x0006, b"alice"),
        attr(0x0014, REALM),
        attr(0x0015, b"obMatJos2gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ]
    peer = attr(0x0012, xor_addr("93.184.216.34", 40000))
    tid = lambda n: bytes([n]) + b"\xab" * 11  # noqa: E731
    six = bytes.fromhex("26062800022000010000000000000001")
    s = {}
    s["binding"] = message(BINDING, REQUEST, tid(1), [])
    s["binding-fingerprint"] = message(BINDING, REQUEST, tid(2), [], fingerprint=True)
    s["allocate-unsigned"] = message(ALLOCATE, REQUEST, tid(3), [attr(0x0019, b"\x11\0\0\0")])
    s["allocate-signed"] = message(
        ALLOCATE,
        REQUEST,
        tid(4),
        [attr(0x0019, b"\x11\0\0\0"), attr(0x000D, struct.pack("!I", 600))] + creds,
        key=key,
        fingerprint=True,
    )
    s["allocate-sha256"] = message(
        ALLOCATE,
        REQUEST,
        tid(5),
        [attr(0x0019, b"\x11\0\0\0"), attr(0x001D, struct.pack("!HH", 2, 0))] + creds,
        key=key256,
        sha256=True,
    )
    s["allocate-even-port-dual"] = message(
        ALLOCATE,
        REQUEST,
        tid(6),
        [attr(0x0019, b"\x11\0\0\0"), attr(0x0018, b"\x80"), attr(0x8000, b"\x02\0\0\0")] + creds,
        key=key,
    )
    s["allocate-tcp-token"] = message(
        ALLOCATE,
        REQUEST,
        tid(7),
        [attr(0x0019, b"\x06\0\0\0"), attr(0x0022, b"\x01" * 8), attr(0x001A, b"")] + creds,
        key=key,
    )
    s["refresh-zero"] = message(
        REFRESH, REQUEST, tid(8), [attr(0x000D, b"\0\0\0\0")] + creds, key=key
    )
    s["create-permission-two"] = message(
        CREATE_PERMISSION,
        REQUEST,
        tid(9),
        [peer, attr(0x0012, xor_addr6(six, 40000, tid(9)))] + creds,
        key=key,
    )
    s["channel-bind"] = message(
        CHANNEL_BIND, REQUEST, tid(10), [attr(0x000C, b"\x40\x00\0\0"), peer] + creds, key=key
    )
    s["send-indication"] = message(SEND, INDICATION, tid(11), [peer, attr(0x0013, b"hello")])
    s["connect"] = message(CONNECT, REQUEST, tid(12), [peer] + creds, key=key)
    s["connection-bind"] = message(
        CONNECTION_BIND, REQUEST, tid(13), [attr(0x002A, b"\0\0\0\x07")] + creds, key=key
    )
    s["error-401"] = message(
        ALLOCATE,
        ERROR,
        tid(14),
        [
            attr(0x0009, b"\0\0\x04\x01Unauthorized"),
            attr(0x0014, REALM),
            attr(0x0015, b"obMatJos2gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            attr(0x8002, struct.pack("!HHHH", 2, 0, 1, 0)),
        ],
    )
    s["error-420-unknown"] = message(
        ALLOCATE, ERROR, tid(15), [attr(0x0009, b"\0\0\x04\x14"), attr(0x000A, b"\x00\x31\x7f\xff")]
    )
    s["data-indication"] = message(DATA, INDICATION, tid(16), [peer, attr(0x0013, b"x" * 33)])
    s["unknown-required"] = message(ALLOCATE, REQUEST, tid(17), [attr(0x0031, b"??")])
    s["after-integrity"] = message(
        BINDING, REQUEST, tid(18), [attr(0x0008, b"\0" * 20), attr(0x0006, b"late")]
    )
    s["ice-binding"] = message(
        BINDING,
        REQUEST,
        tid(19),
        [
            attr(0x0024, b"\x6e\0\x01\xff"),
            attr(0x8029, b"\x93\x2f\xf9\xb1\x51\x26\x3b\x36"),
            attr(0x0025, b""),
        ],
        fingerprint=True,
    )
    for name, text in RFC5769.items():
        s[name] = hexbytes(text)
    return s


def channel_data_seeds():
    return {
        "empty": b"\x40\x00\x00\x00",
        "five": b"\x40\x01\x00\x05hello\0\0\0",
        "last-channel": b"\x7f\xff\x00\x01z",
        "rtp-like": b"\x40\x00\x00\xac" + bytes(range(172)),
    }


def config_seeds():
    with open(os.path.join(HERE, "..", "turnpike.example.toml"), "rb") as f:
        example = f.read()
    return {
        "example": example,
        "empty": b"",
        "auth": b'realm = "example.org"\n[auth]\nusers = ["alice:wonderland"]\nsecrets = ["s1", "s2"]\nnonce_lifetime = 600\n',
        "listen": b'[[listen]]\ntransport = "tcp"\naddress = "[::]:3478"\n[[listen]]\ntransport = "tls"\naddress = "0.0.0.0:443"\nhttp = true\ncert = "c.pem"\nkey = "k.pem"\n',
        "peers": b'[peers]\nallow = ["10.0.0.0/8", "::1/128"]\ndeny = ["10.1.0.0/16"]\n[relay]\naddress = "127.0.0.1"\nports = "49152-65535"\ntcp = true\n',
        "limits": b"[limits]\nallocations = 10\nallocations_per_user = 2\nunauthenticated_per_second = 0\n",
    }


def profile_seeds():
    """The example requirement profiles, and a few broken ones."""
    d = os.path.join(HERE, "..", "profiles")
    seeds = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".toml"):
            with open(os.path.join(d, name), "rb") as f:
                seeds[name[: -len(".toml")]] = f.read()
    head = b'[profile]\nname = "x"\nsource = "y"\n'
    endpoint = b'[[endpoint]]\nid = "media"\nkind = "udp-range"\nhost = "192.0.2.1"\n'
    seeds.update(
        {
            "bad-empty": b"",
            "bad-no-endpoint": head,
            "bad-reversed-range": head + endpoint + b'ports = "20000-10000"\n',
            "bad-wildcard-host": head + endpoint.replace(b"192.0.2.1", b"*.example.com") + b'ports = "1-2"\n',
            "bad-dangling-fallback": head
            + endpoint
            + b'ports = "5"\n[[endpoint]]\nid = "t"\nkind = "turn-tls"\nhost = "t.example"\nport = 443\nfallback_for = ["medai"]\n',
            "bad-threshold": head
            + endpoint
            + b'ports = "5"\n[thresholds]\nloss_pct = { max = 150, source = "" }\nrtt_ms = { min = nan }\n',
            "measure": head
            + endpoint
            + b'ports = "5"\n[thresholds]\nudp_idle_timeout_s = { min = 5, source = "z" }\n[measure]\nudp_idle_timeout = true\n',
            "bad-measure": head + endpoint + b'ports = "5"\n[measure]\nudp_idle_timeout = 1\nudp_idle_timout = true\n',
            "bad-syntax": head + b"[[endpoint]\nport = 44 3\n",
            "bad-types": head + b'[[endpoint]]\nid = 1\nport = "443"\nrequired = "yes"\n',
        }
    )
    return seeds


def probe_seeds():
    """Probe requests and replies (the turnpike-probe wire format, version
    2) and STUN Binding requests as the responder's ports see them, each
    after the five bytes the target's other fields take (IPv4, a source
    port, the socket that received it, an alternate address)."""
    head = bytes([0, 0x30, 0x39, 0, 1])

    def request(kind, flags=0, dscp=0xFF, args=b"", length=100):
        fixed = struct.pack("!4sBBBBIQQQ", b"TPKP", 2, kind, flags, dscp, 7, 11, 13, 17)
        body = fixed + args.ljust(12, b"\0")
        return body.ljust(length, b"\0")

    def reply(kind, length):
        fixed = struct.pack("!4sBBBBIQQHHQIQ", b"TPKP", 2, 0x80 | kind, 46, 4, 7, 11, 19, 100, 5000, 13, 3, 17)
        return (fixed + bytes([198, 51, 100, 7])).ljust(length, b"\0")

    tid = lambda n: bytes([n]) + b"\xcd" * 11  # noqa: E731
    change = lambda flags: attr(0x0003, struct.pack("!I", flags))  # noqa: E731
    seeds = {
        "echo": request(1),
        "stamp-tally": request(2, flags=1, dscp=46),
        "later": request(3, args=struct.pack("!I", 20000)),
        "train": request(4, args=struct.pack("!IIH", 100, 9600, 1200)),
        "echo-reply": reply(1, 100),
        "stamp-reply": reply(2, 56),
        "train-packet": reply(4, 1200),
        "binding": message(BINDING, REQUEST, tid(1), [], fingerprint=True),
        "binding-change-ip-port": message(BINDING, REQUEST, tid(2), [change(6)]),
        "binding-change-port": message(BINDING, REQUEST, tid(3), [change(2)], fingerprint=True),
    }
    return {k: head + v for k, v in seeds.items()}


def write(target, seeds):
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    stun = stun_seeds()
    cd = channel_data_seeds()
    write("stun_message", stun)
    write("channel_data", cd)
    # The structured targets read any bytes; real messages make good seeds.
    stream = {k: v for k, v in stun.items() if not k.startswith("rfc")}
    stream["stun-then-channel-data"] = stun["binding"] + cd["five"] + cd["rtp-like"]
    stream["not-turn"] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    stream["tls-hello"] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
    write("stream_framing", stream)
    write("turn_server", {**stun, **cd})
    write("config", config_seeds())
    write("profile", profile_seeds())
    write("probe", probe_seeds())


if __name__ == "__main__":
    main()
