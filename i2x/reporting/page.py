"""The HTML shell of the report: escaping, small HTML helpers, the stylesheet and the page template.

Everything that reaches the page from outside (class names, paths, chart specs) goes through
:func:`esc` (HTML text and attributes) or :func:`script_json` (JSON inside a ``<script>``), so a
class called ``</script><script>alert(1)</script>`` stays text. The Vega libraries are inlined
(vl-convert bundles them), so the page loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import altair as alt

#: Vega-Embed options: SVG (crisp, inspectable) and no action menu (its links point online).
EMBED_OPTIONS = {"actions": False, "renderer": "svg"}
#: The page may fetch nothing: inline scripts and styles (Vega compiles expressions, hence eval), data-URI images.
CSP = "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:"


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


_SCRIPT = """
(function () {
  // tables of class "sortable": a click on a header sorts by that column (numbers as numbers), again to reverse
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      const sort = function () {
        const body = table.tBodies[0];
        const up = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        const key = function (row) {
          const text = (row.cells[col] ? row.cells[col].textContent : "").trim();
          const num = parseFloat(text.replace(/[,%]/g, ""));
          return /^[-+]?[0-9.,]+%?/.test(text) && !isNaN(num) ? num : text;
        };
        const rows = Array.from(body.rows);
        rows.sort(function (a, b) {
          const x = key(a), y = key(b);
          const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return up ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  });
})();
(function () {
  const specs = JSON.parse(document.getElementById("i2x-specs").textContent);
  const options = JSON.parse(document.getElementById("i2x-embed-options").textContent);
  const jobs = Object.keys(specs).map(function (id) {
    return vegaEmbed("#" + id, specs[id], options).catch(function (err) {
      console.error("chart " + id + ": " + err);
      throw err;
    });
  });
  Promise.all(jobs).then(function () {
    window.i2xRenderedMs = performance.now();
    document.body.setAttribute("data-charts", "rendered");
  }, function () { document.body.setAttribute("data-charts", "failed"); });
})();
"""


def render_page(title: str, subtitle: str, sections: list[Section], specs: dict[str, dict[str, Any]],
                links: list[tuple[str, str]], footer: str) -> str:
    """The whole page: header, table of contents, sections, then the inline Vega bundle and the chart specs."""
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    link_html = " · ".join(f'<a href="{esc(href)}">{esc(text)}</a>' for href, text in links)
    body = "\n".join(_section_html(s) for s in sections)
    bundle = vega_bundle().replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
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
<script id="i2x-embed-options" type="application/json">{script_json(EMBED_OPTIONS)}</script>
<script>{bundle}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _section_html(section: Section) -> str:
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in section.notes)
    return (f'<section id="{esc(section.id)}"><h2>{esc(section.title)}</h2>'
            f'<p class="intro">{esc(section.intro)}</p>{notes}{section.body}</section>')


CSS = """
:root { --fg:#1d2430; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --card:#fff; --accent:#2e6fd8;
        --shared:#0f7b6c; --special:#8e44ad; --uncertain:#c0392b; --warn:#b7791f; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
nav.toc { position:fixed; top:0; left:0; bottom:0; width:220px; padding:24px 18px; background:#fff;
          border-right:1px solid var(--line); overflow-y:auto; }
nav.toc .brand { font-weight:700; font-size:18px; margin-bottom:14px; }
nav.toc ol { padding-left:18px; margin:0 0 18px; }
nav.toc li { margin:6px 0; }
nav.toc a { color:var(--fg); text-decoration:none; }
nav.toc a:hover { color:var(--accent); }
nav.toc .links { font-size:13px; color:var(--muted); }
main { margin-left:220px; padding:28px 40px 60px; max-width:1280px; }
header h1 { margin:0 0 4px; font-size:26px; }
.subtitle { color:var(--muted); margin:0 0 20px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:22px 26px; margin:22px 0; }
h2 { margin:0 0 6px; font-size:21px; }
h3 { margin:22px 0 8px; font-size:16px; }
.intro { color:var(--muted); margin:0 0 16px; max-width:900px; }
.note { background:#fff8e6; border-left:3px solid var(--warn); padding:8px 12px; margin:8px 0; }
.muted { color:var(--muted); }
a { color:var(--accent); }
table { border-collapse:collapse; margin:8px 0 14px; font-size:14px; }
th, td { text-align:left; padding:5px 12px 5px 0; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; }
table.facts { width:100%; max-width:900px; }
table.facts td:first-child { width:200px; color:var(--muted); }
.ufacts { width:320px; }
.ufacts table.facts td:first-child { width:120px; }
.row { display:flex; flex-wrap:wrap; gap:28px; align-items:flex-start; }
.chart { min-height:60px; }
figure { display:table; margin:0 0 12px; }
figcaption { display:table-caption; caption-side:bottom; font-size:13px; color:var(--muted); padding-top:2px; }
.vega-bindings { margin-top:6px; font-size:14px; }
.vega-bind-name { margin-right:8px; color:var(--muted); }
.chip { display:inline-block; padding:1px 8px; margin:1px 3px 1px 0; border-radius:10px; font-size:12px;
        background:#eef1f5; white-space:nowrap; }
.chip.shared { background:#e3f4f1; color:var(--shared); }
.chip.specialized { background:#f3e8f8; color:var(--special); }
.chip.uncertain { background:#fbe9e7; color:var(--uncertain); }
.chip.warn { background:#fff3d6; color:var(--warn); }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(250px, 1fr)); gap:14px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 12px; background:#fff; }
.card h4 { margin:0 0 2px; font-size:15px; }
.card .meta { font-size:12px; color:var(--muted); margin-bottom:6px; }
.patches { display:flex; gap:4px; flex-wrap:wrap; margin:4px 0 8px; }
.patches img { max-width:96px; image-rendering:pixelated; border-radius:3px; border:1px solid var(--line); }
.bars { display:flex; align-items:flex-end; gap:2px; height:40px; border-bottom:1px solid var(--line); }
.bars span { flex:1; background:#9fb7dc; min-height:1px; border-radius:2px 2px 0 0; }
.bars span.on { background:var(--shared); }
.barlabels { display:flex; gap:2px; font-size:10px; color:var(--muted); }
.barlabels span { flex:1; text-align:center; overflow:hidden; white-space:nowrap; }
.ucard { border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:12px 0; }
.ucard h3 { margin:0 0 6px; }
table.film td { padding:4px 6px 4px 0; }
table.film img { display:block; image-rendering:auto; border-radius:3px; }
table.film .cap { font-size:11px; color:var(--muted); white-space:nowrap; }
table.film .cap.wrong { color:var(--uncertain); font-weight:600; }
table.film td.who { font-size:12px; min-width:130px; }
.legend-bar { display:inline-block; width:140px; height:10px; vertical-align:middle; border-radius:2px; margin:0 6px; }
.verdict table.facts td:first-child { width:160px; font-weight:600; color:var(--fg); }
ul.tight { margin:4px 0; padding-left:18px; }
a.ref { text-decoration:none; }
a.ref:hover .chip { outline:1px solid var(--accent); }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th[aria-sort=ascending]::after { content:" ▲"; }
table.sortable th[aria-sort=descending]::after { content:" ▼"; }
footer { color:var(--muted); font-size:13px; margin-top:30px; }
@media (max-width: 900px) { nav.toc { position:static; width:auto; } main { margin-left:0; padding:16px; } }
"""
