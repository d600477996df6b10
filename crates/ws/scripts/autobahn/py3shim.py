"""Python 3 helpers for the patched Autobahn|Testsuite (copied in as autobahntestsuite/_py3shim.py).

patch_suite.py copies this module into the installed suite and rewrites a few call sites to use
it. The suite was written for Python 2, where a plain "..." literal is a byte string. After the
2to3 pass those literals are Python 3 str, and we keep them that way: such a str is read as one
code point per octet (latin-1), and is turned into bytes only where it reaches the wire or is
compared with what the peer sent back. That keeps the suite's hundreds of "\\xNN" payload
literals meaning what they meant in Python 2 without editing each of them.
"""

import binascii


def octets(value):
    """A Python 2 byte string (str, latin-1 domain) as bytes; bytes-likes as bytes; else unchanged.

    A str with a code point above U+00FF cannot have been a Python 2 byte string; it is encoded
    as UTF-8 rather than rejected, which is what the peer would have received from Python 2 for
    a text literal.
    """
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def octets_deep(value):
    """octets() applied through tuples, lists and dict values (used to compare event lists)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return octets(value)
    if isinstance(value, (list, tuple)):
        return type(value)(octets_deep(v) for v in value)
    if isinstance(value, dict):
        return {k: octets_deep(v) for k, v in value.items()}
    return value


def utf8_source(text):
    """A non-ASCII literal from a '# coding=utf-8' case file, as the byte string Python 2 saw."""
    return text.encode("utf-8").decode("latin-1")


def as_text(value):
    """A Python 2 byte string holding UTF-8 (e.g. a case description built from a utf8_source
    payload) as the text it spelled; anything else unchanged."""
    if isinstance(value, str):
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value
    return value


def hexlify(value):
    """binascii.b2a_hex for str or bytes (or a single octet as int), returning str."""
    if isinstance(value, int):
        value = bytes([value])
    return binascii.b2a_hex(octets(value)).decode("ascii")


def readable(value):
    """Bytes shown in a report: decoded as UTF-8, undecodable octets replaced."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value


def hex_log(data, maxlen=64):
    """The wire log's hex dump of octets (fuzzing.binLogData), as str."""
    data = octets(data)
    ellipsis = " ..."
    if len(data) > maxlen - len(ellipsis):
        return hexlify(data[:maxlen]) + ellipsis
    return hexlify(data)


def text_log(data, maxlen=64, replace=False):
    """The wire log's text view of octets (fuzzing.asciiLogData), as str.

    Valid UTF-8 (or anything, with replace=True) is shown as text; otherwise "0x" and the hex
    dump, as in the original.
    """
    data = octets(data)
    ellipsis = b" ..."
    if len(data) > maxlen - len(ellipsis):
        data = data[:maxlen] + ellipsis
    try:
        return data.decode("utf-8", "replace" if replace else "strict")
    except UnicodeDecodeError:
        return "0x" + hex_log(data, maxlen)


def record_case(outdir, result):
    """Append one finished case to outdir/progress.jsonl.

    wstest writes its reports only after the last case, so without this a run stopped by the
    time limit would leave nothing to summarise.
    """
    import json
    import os
    import time

    os.makedirs(outdir, exist_ok=True)
    row = {key: result.get(key) for key in ("id", "behavior", "behaviorClose", "duration")}
    row["finished"] = time.time()
    with open(os.path.join(outdir, "progress.jsonl"), "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


class OctetSending(object):
    """Mixin for the fuzzing protocol: encode payloads that the test cases pass as str.

    Sits between FuzzingProtocol and autobahn's WebSocketProtocol in the MRO, so every call a
    case makes (self.p.sendFrame(...), ...) and every internal call autobahn makes to these
    methods goes through it. Only the payload-like arguments are touched.
    """

    def sendFrame(self, opcode, payload=b"", *args, **kwargs):
        if kwargs.get("mask") is not None:
            kwargs["mask"] = octets(kwargs["mask"])
        return super().sendFrame(opcode, octets(payload), *args, **kwargs)

    def sendCloseFrame(self, code=None, reasonUtf8=None, *args, **kwargs):
        return super().sendCloseFrame(code, octets(reasonUtf8), *args, **kwargs)

    def sendMessage(self, payload, *args, **kwargs):
        return super().sendMessage(octets(payload), *args, **kwargs)

    def sendMessageFrame(self, payload, *args, **kwargs):
        return super().sendMessageFrame(octets(payload), *args, **kwargs)

    def sendMessageFrameData(self, payload, *args, **kwargs):
        return super().sendMessageFrameData(octets(payload), *args, **kwargs)


def json_default(value):
    """json.dumps fallback for what Python 2's json accepted implicitly."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return readable(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError("%r is not JSON serializable" % (value,))
