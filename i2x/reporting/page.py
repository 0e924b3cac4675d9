"""The HTML shell of the report: escaping, small HTML helpers and the page template (stylesheet and script: shell).

Everything that reaches the page from outside (class names, paths, chart specs) goes through
:func:`esc` (HTML text and attributes) or :func:`script_json` (JSON inside a ``<script>``), so a
class called ``</script><script>alert(1)</script>`` stays text. The Vega libraries are inlined
(vl-convert bundles them), so the page loads nothing from the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import altair as alt

from i2x.io.workdir import GENERATOR
from i2x.reporting.shell import CSS, SCRIPT

#: Vega-Embed options: SVG (crisp, inspectable) and no action menu (its links point online).
EMBED_OPTIONS = {"actions": False, "renderer": "svg"}


def script_hash(script: str) -> str:
    """The CSP source that lets exactly this inline script run: ``'sha256-<base64 digest of its UTF-8 text>'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy(*scripts: str) -> str:
    """The page's policy: it fetches nothing and runs only ``scripts`` (by hash), so an inline handler or a script
    that a missed escape let in never runs; inline styles, data-URI images; Vega compiles its expressions, hence
    'unsafe-eval'."""
    hashes = " ".join(script_hash(s) for s in scripts)
    return (f"default-src 'none'; script-src {hashes} 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'")


@dataclass
class Section:
    """One section of the report: an anchor id, a title, a one-sentence "what this shows" and its HTML body."""

    id: str
    title: str
    intro: str
    body: str
    notes: list[str] = field(default_factory=list)


def esc(value: Any) -> str:
    """HTML-escape any value for text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON that is safe inside ``<script>``: ``<``, ``>``, ``&`` and the JS line separators are \\u-escaped."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table (no header row when ``headers`` is None); cells are escaped unless they are :class:`Raw`."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{cell_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}">{head}<tbody>{body}</tbody></table>'


class Raw(str):
    """A string already made safe (built from escaped parts); :func:`cell_html` passes it through."""


def cell_html(value: Any) -> str:
    """Escape a table cell unless it is :class:`Raw`; floats get 4 significant digits."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float):
        return esc(f"{value:.4g}")
    if value is None:
        return '<span class="muted">–</span>'
    return esc(value)


def chip(text: Any, kind: str = "") -> Raw:
    """A small rounded label (``kind``: shared, specialized, uncertain, warn, or empty)."""
    return Raw(f'<span class="chip {esc(kind)}">{esc(text)}</span>')


def shortcut_chip(found: bool) -> Raw:
    """The shortcut verdict as a chip, worded as the verdict's sentence is: "shortcut found" (warning colour) or
    "no shortcut" (calm colour)."""
    return chip("shortcut found", "warn") if found else chip("no shortcut", "ok")


def proto_ref(k: int, kind: str = "") -> Raw:
    """A prototype mention (chip "P3") that links to its card in the prototypes section."""
    return Raw(f'<a class="ref" href="#prototype-{int(k)}">{chip(f"P{int(k)}", kind)}</a>')


def class_ref(c: int, name: Any, kind: str = "") -> Raw:
    """A class mention (chip with its name, escaped) that links to its row in the class structure section."""
    return Raw(f'<a class="ref" href="#class-{int(c)}">{chip(name, kind)}</a>')


def shown_path(value: Any, base: Path) -> str:
    """A path as the page shows it: relative to ``base`` (the analysis directory) when inside it, else its file
    name, so no absolute path of the machine reaches the page; ``kind:/a/b`` data specs keep their kind."""
    text = str(value)
    if "://" in text:  # on object storage: the key below the analysis directory, or the name
        prefix = str(base).rstrip("/") + "/"
        return text[len(prefix):] if text.startswith(prefix) else text.rstrip("/").rsplit("/", 1)[-1]
    kind, sep, rest = text.partition(":")
    if sep and "/" not in kind and os.path.isabs(rest):
        return f"{kind}:{shown_path(rest, base)}"
    if not os.path.isabs(text):
        return text
    path = Path(text)
    try:
        return str(path.resolve().relative_to(Path(base).resolve())) or "."
    except (ValueError, TypeError):  # outside base, or base is on object storage (a URL: no local path is inside)
        return path.name or text


_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"<>:]+/)*[^\s/'\"<>:,;)]+")


def scrub_paths(text: str, base: Path) -> str:
    """``text`` (a warning, a study's note) with every absolute path in it shown as :func:`shown_path` does."""
    return _ABSOLUTE.sub(lambda m: shown_path(m.group(0), base), str(text))


def img(uri: str, alt_text: str, cls: str = "", title: str | None = None) -> str:
    """An ``<img>`` of a data URI; alt and title are escaped."""
    tip = f' title="{esc(title)}"' if title else ""
    return f'<img class="{esc(cls)}" src="{esc(uri)}" alt="{esc(alt_text)}"{tip}>'


def vega_version() -> str:
    """The Vega-Lite version of the installed altair, as vl-convert names it (``v6_4``)."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"v{major}_{minor}"


def _cache_dir() -> Path:
    base = os.environ.get("I2X_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "i2x")
    return Path(base)


def vega_bundle() -> str:
    """The Vega + Vega-Lite + Vega-Embed JavaScript, defining ``window.vegaEmbed``.

    vl-convert builds it (about 8 s the first time in a process), so it is cached on disk under
    ``$I2X_CACHE_DIR`` (default ``~/.cache/i2x``) keyed by the vl-convert and Vega-Lite versions.
    """
    import vl_convert as vlc

    version = vega_version()
    path = _cache_dir() / f"vega-embed-{vlc.__version__}-{version}.js"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    bundle = vlc.javascript_bundle(vl_version=version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs time
    return bundle


def render_page(title: str, subtitle: str, sections: list[Section], specs: dict[str, dict[str, Any]],
                links: list[tuple[str, str]], footer: str, inputs: dict[str, Any] | None = None) -> str:
    """The whole page: header, table of contents, sections, then the inline Vega bundle and the chart specs;
    ``inputs`` (the files each section read, :mod:`i2x.reporting.freshness`) is kept in the page as JSON."""
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    link_html = " · ".join(f'<a href="{esc(href)}">{esc(text)}</a>' for href, text in links)
    body = "\n".join(_section_html(s) for s in sections)
    bundle = vega_bundle().replace("</script", "<\\/script")
    record = f'\n<script id="i2x-inputs" type="application/json">{script_json(inputs)}</script>' if inputs else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{esc(GENERATOR)}">
<meta http-equiv="Content-Security-Policy" content="{content_security_policy(bundle, SCRIPT)}">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<nav class="toc"><div class="brand">i2x report</div><ol>{toc}</ol><div class="links">{link_html}</div></nav>
<main>
<header><h1>{esc(title)}</h1><p class="subtitle">{esc(subtitle)}</p></header>
{body}
<footer>{esc(footer)}</footer>
</main>
<script id="i2x-specs" type="application/json">{script_json(specs)}</script>
<script id="i2x-embed-options" type="application/json">{script_json(EMBED_OPTIONS)}</script>{record}
<script>{bundle}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _section_html(section: Section) -> str:
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in section.notes)
    return (f'<section id="{esc(section.id)}"><h2>{esc(section.title)}</h2>'
            f'<p class="intro">{esc(section.intro)}</p>{notes}{section.body}</section>')
