"""The doctor's output: an aligned table (colour on a terminal) or JSON matching `schema.json`."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter

from gfd.doctor.checks import FAILED, OK, SKIPPED, WARNING, Check

SCHEMA_VERSION = 1
_COLOURS = {OK: "\033[32m", WARNING: "\033[33m", FAILED: "\033[31m", SKIPPED: "\033[2m"}


def as_json(checks: list[Check]) -> str:
    counts = Counter(c.verdict for c in checks)
    return json.dumps({
        "version": SCHEMA_VERSION,
        "checks": [{"id": c.id, "verdict": c.verdict, "evidence": c.evidence, "remedy": c.remedy} for c in checks],
        "summary": {v: counts.get(v, 0) for v in (OK, WARNING, FAILED, SKIPPED)},
    }, indent=2)


def as_table(checks: list[Check], colour: bool) -> str:
    width = max(80, shutil.get_terminal_size((120, 24)).columns)
    id_w = max(len(c.id) for c in checks)
    text_w = max(30, width - id_w - 12)
    lines = [f"{'CHECK'.ljust(id_w)}  {'VERDICT'.ljust(8)}  EVIDENCE / REMEDY"]
    for c in checks:
        verdict = c.verdict.ljust(8)
        if colour:
            verdict = f"{_COLOURS[c.verdict]}{verdict}\033[0m"
        body = textwrap.wrap(c.evidence, text_w) or [""]
        if c.remedy and c.verdict in (WARNING, FAILED):
            body += textwrap.wrap(f"-> {c.remedy}", text_w)
        lines.append(f"{c.id.ljust(id_w)}  {verdict}  {body[0]}")
        lines += [f"{'':{id_w}}  {'':8}  {more}" for more in body[1:]]
    counts = Counter(c.verdict for c in checks)
    lines.append(", ".join(f"{counts.get(v, 0)} {v}" for v in (OK, WARNING, FAILED, SKIPPED)))
    return "\n".join(lines)


def exit_status(checks: list[Check], strict: bool) -> int:
    """0 all fine; 1 any failure; 2 warnings only, with --strict."""
    verdicts = {c.verdict for c in checks}
    if FAILED in verdicts:
        return 1
    return 2 if strict and WARNING in verdicts else 0
