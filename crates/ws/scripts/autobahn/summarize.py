#!/usr/bin/env python3
"""One-line summary of a wstest fuzzingclient run; the exit status is run.sh's verdict.

Run by run.sh with the suite's virtualenv interpreter (it asks the suite which cases the spec
selects):

    summarize.py plan REPORT_DIR
        before the run: prints how many cases REPORT_DIR/spec.json selects; exit status 2 when
        that is none (wstest would wait forever) or names a case that does not exist
    summarize.py summary REPORT_DIR AGENT WSTEST_STATUS ELAPSED_S TIMED_OUT(0|1) DEADLINE_EPOCH
        after the run: prints the summary line

REPORT_DIR holds spec.json (written by run.sh), wstest.log, and what wstest wrote: index.json
plus per-case reports at the end of a complete run, progress.jsonl (one row per finished case,
see py3shim.record_case) always.

Exit status of `summary`: 0 every selected case ran and none FAILED; 1 some case FAILED or is missing, or
wstest logged a Python traceback; 2 harness error (nothing selected, nothing ran); 3 timeout.
"""

import json
import os
import re
import sys

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
COLUMNS = PASSING + ("FAILED",)
CLEAN_CLOSE = ("OK", "INFORMATIONAL", "UNIMPLEMENTED")
LIST_AT_MOST = 30


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def id_list(ids):
    ids = sorted(ids, key=case_key)
    shown = ",".join(ids[:LIST_AT_MOST])
    return shown + (",... (%d more)" % (len(ids) - LIST_AT_MOST) if len(ids) > LIST_AT_MOST else "")


def planned_cases(outdir):
    """The case ids wstest runs for outdir/spec.json (same selection code as wstest itself),
    and those of them that do not exist (an id given without a wildcard is taken as is)."""
    from autobahntestsuite.case import (CaseBasename, CaseCategories, CaseSetname,
                                        CaseSubCategories, Cases)
    from autobahntestsuite.caseset import CaseSet

    with open(os.path.join(outdir, "spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    case_set = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
    planned = case_set.parseSpecCases(spec)
    return planned, [c for c in planned if c not in case_set.CasesById]


def plan(outdir):
    planned, unknown = planned_cases(outdir)
    if unknown:
        print("autobahn: no such case: %s" % ", ".join(unknown), file=sys.stderr)
        return 2
    if not planned:
        print("autobahn: the case selection matches no case", file=sys.stderr)
        return 2
    print(len(planned))
    return 0


def load_results(outdir, agent):
    """{case id: result row}, from index.json when wstest finished, else progress.jsonl."""
    index = os.path.join(outdir, "index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            return json.load(f).get(agent, {}), True
    rows = {}
    progress = os.path.join(outdir, "progress.jsonl")
    if os.path.exists(progress):
        with open(progress, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["id"]] = row
    return rows, False


def summary(outdir, agent, status, elapsed, timed_out, deadline):
    status, elapsed = int(status), int(elapsed)
    timed_out, deadline = timed_out == "1", float(deadline)
    planned, _ = planned_cases(outdir)
    results, complete = load_results(outdir, agent)

    # Stopping wstest at the deadline closes the connection of the case then running, and
    # the suite records that case (usually as FAILED) before it exits. It did not fail, it was
    # cut off: count it as missing instead. It is the last row, written at the deadline.
    interrupted = None
    if timed_out and not complete and results:
        last_id = list(results)[-1]
        if results[last_id].get("finished", 0) >= deadline - 1:
            interrupted = last_id
            del results[last_id]

    counts = dict.fromkeys(COLUMNS, 0)
    failed, close_issues = [], []
    for case_id, row in results.items():
        behavior = row.get("behavior")
        if behavior in PASSING:
            counts[behavior] += 1
        else:
            counts["FAILED"] += 1
            failed.append(case_id)
        close = row.get("behaviorClose")
        if behavior in PASSING and close not in CLEAN_CLOSE:
            close_issues.append("%s(%s)" % (case_id, close))
    missing = sorted(set(planned) - set(results), key=case_key)

    try:
        with open(os.path.join(outdir, "wstest.log"), encoding="utf-8", errors="replace") as f:
            log = f.read()
    except OSError:
        log = ""
    tracebacks = log.count("Traceback (most recent call last)")
    # e.g. "Connection to ws://127.0.0.1:9001 failed (Connection was refused by other side...)"
    connect_errors = re.findall(r"^Connection to \S+ failed.*$", log, flags=re.M)

    parts = ["AUTOBAHN %s: %s missing=%d" % (
        agent, " ".join("%s=%d" % (c, counts[c]) for c in COLUMNS), len(missing))]
    parts.append("%d/%d cases in %ds" % (len(results), len(planned), elapsed))
    if failed:
        parts.append("failed: " + id_list(failed))
    if missing:
        parts.append("missing: " + id_list(missing))
    if close_issues:
        parts.append("close behaviour: " + ",".join(sorted(close_issues)))
    notes = []
    if timed_out:
        notes.append("TIMEOUT (stopped after %ds)" % elapsed)
        if interrupted:
            notes.append("case %s was running and is counted as missing" % interrupted)
    elif status != 0:
        notes.append("wstest exit status %d" % status)
    elif not complete:
        notes.append("wstest wrote no index.json")
    if tracebacks:
        notes.append("%d Python traceback(s) in wstest.log" % tracebacks)
    if connect_errors:
        notes.append(connect_errors[0])
    elif not results and not timed_out:
        notes.append("no case ran, see wstest.log")
    if notes:
        parts.append("; ".join(notes))
    report = os.path.join(outdir, "index.html")
    parts.append("report: " + (report if os.path.exists(report) else outdir))
    print(" | ".join(parts))

    if timed_out:
        return 3
    if not planned or not results:
        return 2
    if failed or missing or tracebacks:
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "plan":
        sys.exit(plan(sys.argv[2]))
    if len(sys.argv) == 8 and sys.argv[1] == "summary":
        sys.exit(summary(*sys.argv[2:]))
    sys.exit(__doc__)
