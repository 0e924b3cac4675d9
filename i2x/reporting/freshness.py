"""Is the report still true? The page records what each section read; a later check marks the sections whose inputs
changed since (a study run after the report, a re-analysis), so a reader of the old page sees it is out of date.

The record is a JSON block in the page (``<script id="i2x-inputs">``): per section id, each file of the analysis
directory it read and the sha256 of its content then (None: the file was absent); of ``summary.json`` only the
top-level entries the section read count (``summary.json:accuracy``), so a study that adds its entry to the summary
marks its own section and the verdict, not every section. :func:`mark_out_of_date`
compares it with the files now and rewrites the page with a banner and a note on each stale section;
``i2x report`` rebuilds the page, which clears the marks.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

from i2x.io.location import RemotePath, as_path, command_path
from i2x.io.workdir import REPORT, SUMMARY, write_text
from i2x.reporting.page import esc

#: The summary entry that changes with every analysis run (its measured durations): a re-analysis rewrites the store
#: arrays every section reads, so every section records it.
ANALYSIS_RUN = "timings"

_BLOCK = re.compile(r'<script id="i2x-inputs" type="application/json">(.*?)</script>', re.S)
_BANNER = re.compile(r'<div class="stale-banner"[^>]*>.*?</div>\n?', re.S)


def fingerprint(path: Path | RemotePath) -> str | None:
    """sha256 of a file's content, or None when it does not exist."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summary_part(key: str) -> str:
    """The name the record gives one top-level entry of ``summary.json``."""
    return f"{SUMMARY}:{key}"


class _Digests:
    """Fingerprints of files and summary entries of one analysis directory, each computed once."""

    def __init__(self, out_dir: Path | RemotePath) -> None:
        self.out = out_dir
        self.seen: dict[str, str | None] = {}
        self._summary: dict[str, Any] | None = None

    def __call__(self, name: str) -> str | None:
        if name not in self.seen:
            self.seen[name] = self._entry(name[len(SUMMARY) + 1:]) if name.startswith(SUMMARY + ":") \
                else fingerprint(self.out / name)
        return self.seen[name]

    def _entry(self, key: str) -> str | None:
        if self._summary is None:
            try:
                self._summary = json.loads((self.out / SUMMARY).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._summary = {}
        if key not in self._summary:
            return None
        return hashlib.sha256(json.dumps(self._summary[key], sort_keys=True).encode("utf-8")).hexdigest()


def record(out_dir: Path | RemotePath, reads: dict[str, list[str]]) -> dict[str, dict[str, str | None]]:
    """Per section id, the fingerprint of each file (or :func:`summary_part`) it read, relative to ``out_dir``."""
    digest = _Digests(out_dir)
    return {section: {name: digest(name) for name in names} for section, names in reads.items()}


def stale_sections(out_dir: str | Path) -> dict[str, list[str]]:
    """Sections of ``out_dir/report.html`` whose inputs changed since it was built: section id -> changed files
    (empty when the page is current, was built before this record existed, or is absent)."""
    out = as_path(out_dir)
    page = out / REPORT
    if not page.is_file():
        return {}
    found = _BLOCK.search(page.read_text(encoding="utf-8"))
    if not found:
        return {}
    try:
        recorded = json.loads(found.group(1))
    except ValueError:  # an edited page: nothing to compare with
        return {}
    now, stale = _Digests(out), {}
    for section, files in recorded.items():
        changed = sorted({name.partition(":")[0] for name, digest in files.items() if now(name) != digest})
        if changed:
            stale[section] = changed
    return stale


def mark_out_of_date(out_dir: str | Path) -> dict[str, list[str]]:
    """Rewrite ``out_dir/report.html`` so that a banner names the command that rebuilds it and every section whose
    inputs changed says so; returns the stale sections (the page is left as it is when there are none)."""
    out = as_path(out_dir)
    stale = stale_sections(out)
    if not stale:
        return stale
    page = out / REPORT
    text = _BANNER.sub("", page.read_text(encoding="utf-8"))
    command = f"i2x report {command_path(out)}"
    titles = []
    for section, files in stale.items():
        heading = re.compile(r'<section id="' + re.escape(esc(section)) + r'"( class="stale")?><h2>(.*?)</h2>', re.S)
        found = heading.search(text)
        titles.append(html.unescape(found.group(2)) if found else section)
        if found and not found.group(1):  # not marked yet
            note = (f'<p class="note stale-note">Out of date: {esc(", ".join(files))} changed after this page was '
                    f"built. Run <code>{esc(command)}</code>.</p>")
            text = (text[:found.start()] + f'<section id="{esc(section)}" class="stale"><h2>{found.group(2)}</h2>'
                    + note + text[found.end():])
    links = ", ".join(f'<a href="#{esc(s)}">{esc(t)}</a>' for s, t in zip(stale, titles))
    banner = (f'<div class="stale-banner" role="alert"><b>This page is out of date.</b> The inputs of {links} changed '
              f"after it was built; rebuild it with <code>{esc(command)}</code>.</div>\n")
    write_text(page, text.replace("<main>\n", "<main>\n" + banner, 1))
    return stale
