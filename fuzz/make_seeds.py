#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (committed; rerun after changing an input
format of a target). Standard library only. Each seed is small: a valid input of every shape the
target reads, and a few edge cases. The input formats are described at the top of each
fuzz_targets/<target>.rs.

    python3 fuzz/make_seeds.py
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---- ws_frame_decoder: flags, split, stream ------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv1: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(c ^ MASK[i % 4] for i, c in enumerate(payload))


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def ws_frame_decoder() -> None:
    t = "ws_frame_decoder"
    write(t, "text_hello", b"\x00\x03" + frame(1, b"hello"))
    write(t, "fragmented_with_ping", b"\x00\x01"
          + frame(1, "Zürich ".encode()[:2], fin=False)
          + frame(9, b"ping")
          + frame(0, "Zürich ".encode()[2:], fin=False)
          + frame(0, b"end"))
    write(t, "close_1000", b"\x00\x05" + frame(8, struct.pack(">H", 1000) + b"bye"))
    write(t, "close_empty_then_data", b"\x00\x07" + frame(8, b"") + frame(1, b"ignored"))
    write(t, "binary_len16", b"\x00\x10" + frame(2, bytes(range(256)) * 1))
    write(t, "pong_and_binary", b"\x00\x02" + frame(10, b"p") + frame(2, b"\x00\xff"))
    write(t, "len64_msb", b"\x00\x00" + b"\x82\xff" + b"\x80" + b"\x00" * 7 + MASK)
    write(t, "client_unmasked", b"\x01\x04" + frame(1, b"from server", masked=False))
    write(t, "client_gets_masked", b"\x01\x04" + frame(1, b"masked", masked=True))
    write(t, "server_gets_unmasked", b"\x00\x04" + frame(1, b"unmasked", masked=False))
    write(t, "invalid_utf8", b"\x00\x03" + frame(1, b"ok\xc3\x28no"))
    write(t, "close_bad_code", b"\x00\x03" + frame(8, struct.pack(">H", 1005)))
    write(t, "reserved_opcode", b"\x00\x03" + frame(3, b"x"))
    write(t, "small_limit_too_big", b"\x02\x09" + frame(2, b"a" * 400))
    write(t, "small_frame_limit", b"\x06\x09" + frame(1, b"a" * 90, fin=False) + frame(0, b"b" * 90))
    text = b'{"id":1,"publish":{"channel":"chat","data":{"text":"' + b"hello " * 30 + b'"}}}'
    write(t, "deflate_server", b"\x38\x05" + frame(1, deflate(text), rsv1=True))
    write(t, "deflate_fragmented", b"\x08\x05"
          + frame(1, deflate(text)[:10], fin=False, rsv1=True)
          + frame(0, deflate(text)[10:]))
    write(t, "deflate_client", b"\x39\x05" + frame(1, deflate(text), masked=False, rsv1=True))
    write(t, "deflate_garbage", b"\x38\x05" + frame(1, b"\xff\xff\xff\xff", rsv1=True))
    write(t, "rsv1_without_deflate", b"\x00\x05" + frame(1, deflate(b"hi"), rsv1=True))


# ---- ws_handshake: flags, HTTP message ------------------------------------------------------

def ws_handshake() -> None:
    t = "ws_handshake"
    req = (b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
           b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Origin: http://localhost\r\n")
    write(t, "server_plain", b"\x00" + req + b"\r\n")
    write(t, "server_deflate", b"\x02" + req
          + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, "
            b"permessage-deflate; server_max_window_bits=10\r\n"
          + b"Sec-WebSocket-Protocol: centrifuge-json, centrifuge-protobuf\r\n\r\n")
    write(t, "server_bad_deflate_params", b"\x02" + req
          + b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"16\"; "
            b"client_no_context_takeover; client_no_context_takeover\r\n\r\n")
    write(t, "server_post", b"\x00" + req.replace(b"GET", b"POST", 1) + b"\r\n")
    write(t, "server_bad_key", b"\x00" + req.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short") + b"\r\n")
    write(t, "server_version_8", b"\x00" + req.replace(b"Version: 13", b"Version: 8") + b"\r\n")
    write(t, "server_partial", b"\x00" + req)
    resp_tail = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                 b"client_no_context_takeover; server_max_window_bits=12\r\n"
                 b"Sec-WebSocket-Protocol: centrifuge-json\r\n\r\n\x81\x02hi")
    write(t, "client_ok_deflate_protocol", bytes([1 | 2 | 4 | 8]) + resp_tail)
    write(t, "client_unoffered_extension", bytes([1 | 8]) + resp_tail)
    write(t, "client_no_accept", b"\x01HTTP/1.1 101 Switching Protocols\r\n" + resp_tail)
    write(t, "client_400", b"\x01HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    write(t, "client_partial", bytes([1 | 8]) + b"Upgrade: websocket\r\n")


# ---- proto_commands: one WebSocket text frame ----------------------------------------------

def proto_commands() -> None:
    t = "proto_commands"
    cmds = [
        {"id": 1, "connect": {"token": "eyJ.x.y", "name": "js", "data": {"a": 1}, "subs": {"news": {"recover": True}}, "headers": {"k": "v"}}},
        {"id": 2, "subscribe": {"channel": "chat:index", "recover": True, "offset": 42, "epoch": "ab", "data": [1, "x"], "positioned": True, "delta": "fossil", "flag": -1}},
        {"id": 3, "publish": {"channel": "news", "data": {"text": "h\u00e9llo \"q\" \\ \n \u2028", "n": 2.50, "big": 123456789012345678901234}}},
        {"id": 4, "history": {"channel": "news", "limit": -1, "since": {"offset": 3, "epoch": "e"}, "reverse": True}},
        {"id": 5, "presence": {"channel": "room"}},
        {"id": 6, "presence_stats": {"channel": "room"}},
        {"id": 7, "unsubscribe": {"channel": "room"}},
        {"id": 8, "rpc": {"method": "getUser", "data": {"id": 1}}},
        {"send": {"data": "async"}},
        {"id": 9, "refresh": {"token": "t"}},
        {"id": 10, "sub_refresh": {"channel": "$private", "token": "t"}},
        {"id": 11, "ping": {}},
        {},
    ]
    write(t, "batch_all_methods", "\n".join(json.dumps(c, ensure_ascii=False) for c in cmds).encode())
    write(t, "connect", json.dumps(cmds[0]).encode())
    write(t, "publish_escapes", json.dumps(cmds[2], ensure_ascii=False).encode())
    write(t, "pong_blank_lines", b"{}\n\n  \r\n{}\n")
    write(t, "unknown_and_ambiguous", b'{"id":1,"frobnicate":{}}\n{"id":2,"ping":{},"unsubscribe":{"channel":"x"}}')
    write(t, "malformed", b'{"id":1}\n{oops')
    write(t, "wrong_types", b'{"id":-1}\n{"id":1,"subscribe":{"channel":5}}')
    write(t, "deep_data", b'{"id":1,"publish":{"channel":"d","data":' + b"[" * 140 + b"]" * 140 + b"}}")
    write(t, "lone_surrogate", b'{"id":1,"publish":{"channel":"\\ud800","data":"\\udfff"}}')
    # serde_json's RawValue lets a lone surrogate escape through in client data (a tree does not).
    write(t, "lone_surrogate_data", b'{"id":1,"publish":{"channel":"\\ud084","data":"\\udfff"}}')
    write(t, "duplicate_fields", b'{"id":1,"id":2,"publish":{"channel":"a","channel":"b","data":1}}')


# ---- jwt_verify: flags, token / header NUL claims / JWKS ------------------------------------

SECRET = b"fuzz-hmac-secret"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs(header: dict, claims: dict, digest=hashlib.sha256) -> str:
    msg = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return msg + "." + b64url(hmac.new(SECRET, msg.encode(), digest).digest())


def rsa_jwk() -> dict:
    # A fixed 512-bit public key (tests only): n and e as RFC 7518 wants them.
    n = int(
        "c3a8e6e7d1f0b36c3a0b1f6f8b4c2d2e5a7b9c1d3e5f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f"
        "8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819",
        16,
    )
    return {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
            "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")), "e": "AQAB"}


def jwt_verify() -> None:
    t = "jwt_verify"
    hdr = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": "42", "exp": 1800000000, "iat": 1700000000, "info": {"name": "x"},
              "b64info": "eyJhIjoxfQ==", "channels": ["news", "$p"], "meta": [1], "expire_at": 1900000000}
    write(t, "raw_valid_hs256", b"\x00" + hs(hdr, claims).encode())
    write(t, "raw_valid_hs512", b"\x00" + hs({"alg": "HS512"}, {"sub": "u"}, hashlib.sha512).encode())
    write(t, "raw_expired", b"\x08" + hs(hdr, {"sub": "u", "exp": 1600000000}).encode())
    write(t, "raw_alg_none", b"\x00" + (b64url(b'{"alg":"none"}') + "." + b64url(b'{"sub":"u"}') + ".").encode())
    write(t, "raw_garbage", b"\x00a.b.c")
    write(t, "raw_empty", b"\x00")
    write(t, "raw_rs256_unconfigured", b"\x00" + (b64url(b'{"alg":"RS256","kid":"k"}') + "." + b64url(b"{}") + ".c2ln").encode())
    write(t, "signed_claims", b"\x01" + json.dumps(hdr).encode() + b"\x00" + json.dumps(claims).encode())
    write(t, "signed_aud_iss", b"\x05" + json.dumps(hdr).encode() + b"\x00"
          + json.dumps({"sub": "u", "aud": ["x", "fuzz-aud"], "iss": "fuzz-iss", "exp": 0}).encode())
    write(t, "signed_subscription", b"\x0a" + json.dumps(hdr).encode() + b"\x00"
          + json.dumps({"sub": "u", "channel": "$room", "exp": 1700000001, "b64info": "!!"}).encode())
    write(t, "signed_hs384", b"\x11" + b'{"alg":"HS384","kid":"k1"}' + b"\x00" + b'{"sub":5}')
    write(t, "signed_bad_json", b"\x01" + b'{"alg":"HS256"' + b"\x00" + b'{"sub":"u"')
    jwks = {"keys": [rsa_jwk(),
                     {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)},
                     {"kty": "oct", "kid": "oct-1", "k": b64url(b"secret")},
                     {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64url(b"\x03" * 32)}]}
    write(t, "jwks", b"\x03" + json.dumps(jwks).encode())
    write(t, "jwks_empty", b"\x03" + b'{"keys":[]}')


# ---- api_body: flags (method, credentials), body --------------------------------------------

METHODS = ["publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "refresh", "presence",
           "presence_stats", "history", "history_remove", "channels", "info", "batch"]


def api_body() -> None:
    t = "api_body"
    bodies = {
        "publish": {"channel": "news", "data": {"text": "hi", "n": 2.50}, "tags": {"a": "b"}, "idempotency_key": "k1", "skip_history": True},
        "broadcast": {"channels": ["a", "b", ""], "data": [1, 2], "b64data": "eyJ4IjoxfQ=="},
        "subscribe": {"user": "42", "channel": "news", "info": {"x": 1}, "recover_since": {"offset": 1, "epoch": "e"}},
        "unsubscribe": {"user": "42", "channel": "news", "client": "c1"},
        "disconnect": {"user": "42", "disconnect": {"code": 4000, "reason": "bye"}, "whitelist": ["c2"]},
        "refresh": {"user": "42", "expire_at": 1900000000, "expired": False},
        "presence": {"channel": "room"},
        "presence_stats": {"channel": "room"},
        "history": {"channel": "news", "limit": 10, "since": {"offset": 0, "epoch": ""}, "reverse": True},
        "history_remove": {"channel": "news"},
        "channels": {"pattern": "n*"},
        "info": {},
        "batch": {"commands": [{"publish": {"channel": "a", "data": 1}}, {"info": {}},
                               {"batch": {"commands": []}}, {"nope": {}}], "parallel": True},
    }
    for i, m in enumerate(METHODS):
        write(t, f"{i:02}_{m}", bytes([i]) + json.dumps(bodies[m]).encode())
    write(t, "publish_b64data", b"\x00" + b'{"channel":"x","b64data":"eyJhIjpbMSwyXX0="}')
    write(t, "publish_deep", b"\x00" + b'{"channel":"x","data":' + b"[" * 200 + b"]" * 200 + b"}")
    write(t, "publish_wrong_types", b"\x00" + b'{"channel":5,"data":}')
    write(t, "empty_body", b"\x0b")
    write(t, "not_utf8", b"\x06" + b'{"channel":"\xff"}')
    write(t, "authorization_apikey", b"\x1b" + b"{}")
    write(t, "no_key", b"\x20" + b"{}")
    write(t, "wrong_key", b"\x30" + b'{"channel":"x","data":1}')
    write(t, "no_content_type", b"\x46" + b'{"channel":"room"}')
    write(t, "unknown_method", b"\x0d" + b"{}")


# ---- socketio_packets: Engine.IO payloads/packets and Socket.IO packets, as text ---------------

def socketio_packets() -> None:
    t = "socketio_packets"
    seeds = {
        "eio_open": b'0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}',
        "eio_ping": b"2",
        "eio_pong_probe": b"3probe",
        "eio_message": b"4hello",
        "eio_upgrade": b"5",
        "eio_noop": b"6",
        "eio_payload": b"4hello\x1e2\x1e4world",
        "eio_binary_b64": b"bAQIDBA==",
        "eio_payload_mixed": b"4a\x1ebAQI=\x1e1",
        "eio_empty": b"",
        "eio_bad_type": b"9x",
        "sio_connect": b"0",
        "sio_connect_ns_auth": b'0/admin,{"token":"abc"}',
        "sio_disconnect": b"1/admin,",
        "sio_event": b'2["message","hi"]',
        "sio_event_ack": b'2/chat,12["ask",{"q":1}]',
        "sio_ack": b'3/chat,12["answer"]',
        "sio_connect_error": b'4{"message":"not authorized","data":{"code":1}}',
        "sio_binary_event": b'51-["upload",{"_placeholder":true,"num":0}]',
        "sio_binary_ack": b'61-/chat,7[{"_placeholder":true,"num":0}]',
        "sio_too_many_attachments": b'599-["x"]',
        "sio_bad_json": b'2["message",',
        "sio_huge_id": b'299999999999999999999999["x"]',
        # A number serde_json prints shorter than it parsed (found by the fuzzer).
        "sio_long_float": b'0{"n":1000000999999999999999999999999999999999999}',
    }
    for name, data in seeds.items():
        write(t, name, data)


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    ws_frame_decoder()
    ws_handshake()
    proto_commands()
    jwt_verify()
    api_body()
    socketio_packets()
    for d in sorted(CORPUS.iterdir()):
        n = len(list(d.iterdir()))
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{d.name}: {n} seeds, {size} bytes")


if __name__ == "__main__":
    main()
