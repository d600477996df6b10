#!/usr/bin/env python3
"""Port the pip-installed Autobahn|Testsuite to Python 3, in place, inside its virtualenv.

Run with the virtualenv's interpreter, once, right after `pip install -r requirements.txt`:

    VENV/bin/python patch_suite.py

autobahntestsuite (25.10.1 on PyPI) is still Python 2 code written against the autobahn 0.10.9
API. Its fuzzingclient mode needs three kinds of change to run on Python 3:

1. Syntax and library renames (print, except ... as, relative imports, dict views, ...): the
   standard 2to3 fixers, taken from `fissix` (the maintained fork of lib2to3, which left the
   standard library in Python 3.13).
2. Byte strings. The test cases build payloads from "..." literals, which were byte strings in
   Python 2 and are str now. They stay str (see py3shim.py) and are encoded where they reach
   autobahn's send methods and where expected and received events are compared.
3. A handful of other leftovers: integer division, zope.interface's removed implements(), an
   unconditional TLS import, and the report writer (text files, bytes in json/html).

Only the fuzzingclient path (`wstest -m fuzzingclient`) is exercised by run.sh; other modes are
converted by 2to3 but not otherwise fixed. Each targeted edit names the text it replaces and
fails loudly when that text is not found exactly as often as expected, so a different upstream
version stops the setup instead of silently producing a suite that measures something else.
"""

import re
import shutil
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM_NAME = "_py3shim"


class PatchError(SystemExit):
    def __init__(self, message):
        super().__init__("patch_suite.py: " + message)


class Package:
    """An installed package directory whose files we edit, counting the edits."""

    def __init__(self, root):
        self.root = Path(root)
        self.edits = 0
        if not self.root.is_dir():
            raise PatchError("%s is not installed" % self.root)

    def _load(self, rel):
        return (self.root / rel).read_text(encoding="utf-8")

    def _store(self, rel, text):
        (self.root / rel).write_text(text, encoding="utf-8")

    def replace(self, rel, old, new, times=1):
        """Replace `old` by `new` in file `rel`; `old` must occur exactly `times` times."""
        text = self._load(rel)
        found = text.count(old)
        if found != times:
            raise PatchError("%s: expected %d x %r, found %d" % (rel, times, old, found))
        self._store(rel, text.replace(old, new))
        self.edits += 1

    def resub(self, rel, pattern, repl, times=1):
        """Regex substitution (multiline) in file `rel`; must match exactly `times` times."""
        text, found = re.subn(pattern, repl, self._load(rel), flags=re.M)
        if found != times:
            raise PatchError("%s: expected %d x /%s/, found %d" % (rel, times, pattern, found))
        self._store(rel, text)
        self.edits += 1


def run_2to3(package_dir):
    """Apply the standard 2to3 fixers to every .py file under package_dir, in place.

    The diff and fissix's messages go to 2to3.log at the top of the virtualenv.
    """
    import logging

    from fissix.main import main as fissix_main

    log_path = Path(sys.prefix) / "2to3.log"
    with open(log_path, "w", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            # fissix logs through the logging module; point it at the same file.
            logging.basicConfig(stream=log, level=logging.INFO, force=True)
            # -w write back, -n no .bak files, -j 2 two worker processes
            status = fissix_main("fissix.fixes", ["-w", "-n", "-j", "2", str(package_dir)])
        finally:
            sys.stdout, sys.stderr = saved
            logging.shutdown()
    if status not in (0, None):
        raise PatchError("2to3 (fissix) failed with status %r, see %s" % (status, log_path))


# Rewrites applied to every module under case/, with how often each must apply in total.
CASE_REWRITES = [
    # Hex dumps in descriptions and results: binascii takes and returns bytes now.
    (r"\bbinascii\.(?:b2a_hex|hexlify)\(", "_py3shim.hexlify(", 25),
    # Non-ASCII payload literals of cases 6.2.*: Python 2 saw their UTF-8 octets.
    (r'^(\s*PAYLOAD\d?\s*=\s*)("[^"\n]*[^\x00-\x7f][^"\n]*")[ \t]*$',
     r"\1_py3shim.utf8_source(\2)", 4),
    # type(name, (object, Case), ...) for generated cases: Case is a new-style class now, and
    # object listed before it makes the MRO inconsistent.
    (r"\(object,\s*Case,\s*\)", "(Case,)", 6),
]


def patch_case_modules(ats):
    """The test cases (case/*.py)."""
    applied = [0] * len(CASE_REWRITES)
    for path in sorted((ats.root / "case").glob("*.py")):
        text = original = path.read_text(encoding="utf-8")
        for i, (pattern, repl, _) in enumerate(CASE_REWRITES):
            text, n = re.subn(pattern, repl, text, flags=re.M)
            applied[i] += n
        if text != original:
            path.write_text("from .. import %s as _py3shim\n%s" % (SHIM_NAME, text),
                            encoding="utf-8")
    for (pattern, _, expected), n in zip(CASE_REWRITES, applied):
        if n != expected:
            raise PatchError("case/*.py: expected %d x /%s/, found %d" % (expected, pattern, n))
        ats.edits += n

    # Case.compare decides every verdict: expected events are built from str literals, received
    # ones carry bytes from autobahn. Compare both as octets (still as pickles, as before, so
    # that e.g. True and 1 stay different).
    ats.replace("case/case.py", "import pickle\n",
                "import pickle\nfrom .. import %s as _py3shim\n" % SHIM_NAME)
    ats.replace("case/case.py", "return pickle.dumps(obj1) == pickle.dumps(obj2)",
                "return pickle.dumps(_py3shim.octets_deep(obj1)) == "
                "pickle.dumps(_py3shim.octets_deep(obj2))")
    # The UTF-8 cases (6.*) are generated at import time, running the validator over str
    # prefixes of a test string.
    ats.replace("case/case6_x_x.py", "res = v.validate(vss[:i])",
                "res = v.validate(_py3shim.octets(vss[:i]))")
    # Integer division: 10.1.1 compares the number of frames it expects to have sent (an int)
    # with the frame statistics.
    ats.replace("case/case10_1_1.py", "len(self.payload) / self.p.autoFragmentSize",
                "len(self.payload) // self.p.autoFragmentSize")
    # zope.interface dropped the implements() class advice (case 9.9.1 only has to import).
    ats.replace("case/case9_9_1.py", "from zope.interface import implements\n",
                "from zope.interface import implementer\n")
    ats.replace("case/case9_9_1.py",
                "class FrameProducer:\n\n   implements(interfaces.IPushProducer)\n",
                "@implementer(interfaces.IPushProducer)\nclass FrameProducer:\n")


def patch_fuzzing(ats):
    """fuzzing.py: the fuzzing client/server protocol, case runner and report writer."""
    f = "fuzzing.py"
    ats.replace(f, "import autobahntestsuite\n",
                "import autobahntestsuite\nfrom . import %s as _py3shim\n" % SHIM_NAME)
    # TLS is never used for ws:// targets, but the module imports twisted.internet.ssl (which
    # needs pyOpenSSL and cryptography) and builds a TLS context factory for every server. Make
    # both optional so the virtualenv needs no TLS stack at all.
    ats.replace(f, "from twisted.internet import reactor, ssl\n",
                "from twisted.internet import reactor\n"
                "try:\n"
                "   from twisted.internet import ssl\n"
                "except ImportError:  # no pyOpenSSL: fine for ws:// (run.sh allows nothing else)\n"
                "   ssl = None\n")
    ats.replace(f, "self.contextFactory = ssl.ClientContextFactory()\n",
                "self.contextFactory = ssl.ClientContextFactory() if ssl else None\n")

    # Payloads the cases pass as str are encoded on their way into autobahn (see OctetSending).
    ats.replace(f, "class FuzzingProtocol:\n", "class FuzzingProtocol(_py3shim.OctetSending):\n")

    # Wire log helpers: replace both functions by bytes-aware versions with the same output.
    ats.resub(f, r"(?s)^def binLogData\(.*?(?=^class FuzzingProtocol)",
              "binLogData = _py3shim.hex_log\nasciiLogData = _py3shim.text_log\n\n\n")
    ats.replace(f, "p = ''.join(payload)", "p = b''.join(payload)")
    ats.replace(f, "binascii.b2a_hex(frameHeader.mask) if frameHeader.mask else None",
                "_py3shim.hexlify(frameHeader.mask) if frameHeader.mask else None", times=2)
    # (The logged mask is hex already; Python 2 hexed it a second time in the HTML report.)
    ats.replace(f, "mmask = binascii.b2a_hex(t[6])", "mmask = str(t[6])")

    # Descriptions of the 6.2.* cases embed their (now latin-1 domain) UTF-8 payloads.
    ats.replace(f, '"description": self.Case.DESCRIPTION,',
                '"description": _py3shim.as_text(self.Case.DESCRIPTION),')

    # The raw opening handshake is bytes; reports show it as text.
    for attr in ("http_request_data", "http_response_data"):
        ats.replace(f, "self.%s if hasattr(self, '%s')" % (attr, attr),
                    "_py3shim.readable(self.%s) if hasattr(self, '%s')" % (attr, attr))

    # Report files: UTF-8 text files, str written as is, bytes (close reasons) via json_default.
    ats.replace(f, "open(os.path.join(outdir, report_filename), 'w')",
                "open(os.path.join(outdir, report_filename), 'w', encoding='utf-8')", times=4)
    ats.replace(f, "json.dumps(case, sort_keys = True, indent = 3, separators = (',', ': '))",
                "json.dumps(case, sort_keys = True, indent = 3, separators = (',', ': '), "
                "default = _py3shim.json_default)")
    ats.replace(f, "% (c[0], case[c[0]], c[1])).encode(\"utf-8\"))", "% (c[0], case[c[0]], c[1])))")
    ats.replace(f, "ll.encode('utf8')))", "ll))")

    # One line per finished case in progress.jsonl (read by summarize.py after a timeout).
    ats.replace(f, "      self.cases[case][agent] = caseResults\n",
                "      self.cases[case][agent] = caseResults\n"
                "      _py3shim.record_case(self.outdir, caseResults)\n")


def patch_suite(ats):
    patch_case_modules(ats)
    patch_fuzzing(ats)


def patch_autobahn(ab):
    """autobahn 0.10.9 itself runs on Python 3; two spots the suite reaches still need help."""
    # wstest imports its serializer mode, which imports this test module; unittest2 was a
    # Python 2 backport of the standard unittest.
    ab.replace("wamp/test/test_serializer.py", "import unittest2 as unittest\n",
               "import unittest\n")
    # sendFrame(payload_len=N) repeats the payload N / len(payload) times: integer division
    # (used by the 9.* limit cases, e.g. 9.7.* with payload "*").
    ab.replace("websocket/protocol.py", "range(payload_len / len(payload))",
               "range(payload_len // len(payload))")


def main():
    site = Path(sysconfig.get_paths()["purelib"])
    ats = Package(site / "autobahntestsuite")
    ab = Package(site / "autobahn")
    if (ats.root / (SHIM_NAME + ".py")).exists():
        raise PatchError("%s is already patched; reinstall it first" % ats.root)

    run_2to3(ats.root)
    shutil.copyfile(HERE / "py3shim.py", ats.root / (SHIM_NAME + ".py"))
    patch_suite(ats)
    patch_autobahn(ab)

    # Stale bytecode of edited modules must not be picked up.
    for cache in list(ats.root.rglob("__pycache__")) + list(ab.root.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    print("patch_suite.py: 2to3 plus %d targeted edits" % (ats.edits + ab.edits))


if __name__ == "__main__":
    main()
