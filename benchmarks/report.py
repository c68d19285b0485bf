"""The table, the machine it ran on, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from benchmarks.core import Result


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _comparison(r: Result) -> str:
    value = r.comparison
    if value is None or r.kind == "limit":
        return "-"
    if r.kind == "ratio":
        return f"{value:.2f}x"
    return f"{value * 1000:+.0f} ms"


def _met(r: Result) -> str:
    if r.error is not None:
        return "ERROR"
    return {True: "yes", False: "NO", None: "-"}[r.met]


def table(results: list[Result]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = ("measure", "logist", "baseline", "ratio / delta", "target", "met?")
    rows = [head]
    for r in results:
        if r.baseline_fixed is not None:
            base = f"{_seconds(r.baseline_fixed)} (ideal)"
        elif r.kind == "limit":
            base = "-"
        else:
            base = _seconds(r.baseline_median)
        rows.append(
            (r.title, _seconds(r.logist_median), base, _comparison(r), r.target_text, _met(r))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows[1:]]
    return "\n".join(out)


def details(results: list[Result]) -> str:
    """Per measure: the baseline, the samples, notes, errors."""
    out = []
    for r in results:
        load = f", load {r.load[0]:.1f} -> {r.load[1]:.1f}" if r.load else ""
        out.append(f"- {r.name} ({r.seconds:.0f} s{load})")
        if r.baseline_text:
            out.append(f"    baseline: {r.baseline_text}")
        if r.logist:
            out.append("    logist:   " + " ".join(f"{x:.3f}" for x in r.logist))
        if r.baseline:
            out.append("    baseline: " + " ".join(f"{x:.3f}" for x in r.baseline))
        for note in r.notes:
            out.append(f"    note: {note}")
        if r.error:
            out.append(f"    ERROR: {r.error}")
    return "\n".join(out)


def machine() -> dict:
    info: dict = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as fh:
            total_kb = int(fh.readline().split()[1])
        info["memory_gib"] = round(total_kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        info["memory_gib"] = None
    try:
        info["docker"] = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["docker"] = None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln for ln in fh if ln.startswith("model name")), "")
        info["cpu"] = model.split(":", 1)[1].strip() if model else platform.machine()
    except OSError:
        info["cpu"] = platform.machine()
    return info


def describe(info: dict) -> str:
    return (
        f"{info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Docker {info['docker']}, kernel {info['kernel']}, Python {info['python']}"
    )


def write_json(path: Path, results: list[Result], info: dict, extra: dict) -> None:
    data = {**extra, "machine": info, "results": [r.to_dict() for r in results]}
    path.write_text(json.dumps(data, indent=2) + "\n")
