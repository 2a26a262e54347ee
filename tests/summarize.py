#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Counts test cases from a meson build's test log: TAP lines of the cmocka suites, JUnit files of the
pytest suites, and whole meson tests for anything else. Prints one line per failed case and, last,
"N passed, N failed". Exits 1 if anything failed."""

import glob
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

build = sys.argv[1] if len(sys.argv) > 1 else "build-test"
log = os.path.join(build, "meson-logs", "testlog.json")
passed = failed = skipped = 0
failures = []

try:
    entries = [json.loads(line) for line in open(log, encoding="utf-8") if line.strip()]
except OSError:
    entries = []

for e in entries:
    name = e.get("name", "?")
    result = e.get("result", "")
    junit = None
    for env in (e.get("env") or {}).items():
        pass
    cmd = e.get("command") or []
    for arg in cmd:
        if isinstance(arg, str) and arg.startswith("--junitxml="):
            junit = arg.split("=", 1)[1]
    if junit and os.path.exists(junit):
        try:
            root = ET.parse(junit).getroot()
        except ET.ParseError:
            root = None
        if root is not None:
            cases = root.iter("testcase")
            n = 0
            for c in cases:
                n += 1
                if c.find("failure") is not None or c.find("error") is not None:
                    failed += 1
                    failures.append(f"{name}: {c.get('classname')}.{c.get('name')}")
                elif c.find("skipped") is not None:
                    skipped += 1
                else:
                    passed += 1
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and n > 0 and not any(f.startswith(name + ":") for f in failures):
                failed += 1
                failures.append(f"{name}: suite exited {result}")
            if n > 0:
                continue
    out = e.get("stdout") or ""
    tap = re.findall(r"^(ok|not ok) \d+", out, re.M)
    if tap:
        for m in re.finditer(r"^(ok|not ok) \d+\s*-?\s*(.*)$", out, re.M):
            if m.group(1) == "ok":
                if "# SKIP" in m.group(2):
                    skipped += 1
                else:
                    passed += 1
            else:
                failed += 1
                failures.append(f"{name}: {m.group(2)}")
        if result not in ("OK", "SKIP", "EXPECTEDFAIL") and not any(f.startswith(name + ":") for f in failures):
            failed += 1
            failures.append(f"{name}: exited {result}")
        continue
    if result in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif result == "SKIP":
        skipped += 1
    else:
        failed += 1
        failures.append(f"{name}: {result}")

if not entries:
    failed += 1
    failures.append(f"no test log at {log}")

# Counts from outside meson (tests/run-all: "passed failed" of tests/fuzz/run-fuzz).
extra = os.environ.get("SUMMARIZE_EXTRA", "").split()
if len(extra) == 2:
    passed += int(extra[0])
    failed += int(extra[1])
    if int(extra[1]):
        failures.append("tests/fuzz/run-fuzz: a fuzz target failed (see its log)")

for f in failures:
    print("FAILED:", f)
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
