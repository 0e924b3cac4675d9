"""The page's stylesheet and script: layout, print styles, and the small interactions (sortable tables, card
filters, the film strips' switches, chart embedding). Inline in every page, so it opens offline."""

SCRIPT = """
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
          // text compares numbers inside it as numbers ("B·P3" before "B·P12")
          const order = typeof x === "number" && typeof y === "number" ? x - y
            : String(x).localeCompare(String(y), undefined, {numeric: true});
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
  // card filters: a role and a class drop-down show only the cards (of data-target) whose data-roles and
  // data-classes hold the chosen values, and with both chosen whose data-pairs holds "role:class"
  document.querySelectorAll(".card-filter").forEach(function (box) {
    const cards = Array.from(document.querySelectorAll(box.getAttribute("data-target")));
    const role = box.querySelector("select.role"), cls = box.querySelector("select.cls");
    const count = box.querySelector(".count");
    const apply = function () {
      let shown = 0;
      cards.forEach(function (card) {
        const has = function (attr, value) { return card.getAttribute(attr).split(" ").indexOf(value) >= 0; };
        // a role and a class together: that role for that class (data-pairs), not each on its own
        const ok = role.value && cls.value && role.value !== "none" ? has("data-pairs", role.value + ":" + cls.value)
          : (!role.value || has("data-roles", role.value)) && (!cls.value || has("data-classes", cls.value));
        card.hidden = !ok;
        if (ok) { shown += 1; }
      });
      count.textContent = shown + " of " + cards.length + " shown";
    };
    role.addEventListener("change", apply);
    cls.addEventListener("change", apply);
    apply();
  });
  // switches (select.switch-select, data-attr="method" or "scale"): inside the switch's section show only the
  // elements whose data-<attr> equals the chosen value, for every switch of that section
  document.querySelectorAll("section").forEach(function (section) {
    const switches = Array.from(section.querySelectorAll("select.switch-select"));
    if (!switches.length) { return; }
    const apply = function () {
      section.querySelectorAll("[data-method], [data-scale]").forEach(function (el) {
        el.hidden = switches.some(function (s) {
          const value = el.getAttribute("data-" + s.getAttribute("data-attr"));
          return value !== null && value !== s.value;
        });
      });
    };
    switches.forEach(function (s) { s.addEventListener("change", apply); });
    apply();
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
.lead { font-size:17px; margin:0 0 12px; max-width:980px; }
.suspect-shots { display:flex; gap:10px; flex-wrap:wrap; margin:6px 0 10px; }
.suspect-shot { position:relative; display:block; margin:0; }
.suspect-shot img { display:block; border-radius:4px; }
.suspect-shot img.mask { position:absolute; top:0; left:0; }
.suspect-shot figcaption { display:block; font-size:13px; }
.chip.ok { background:#e3f4f1; color:var(--shared); }
a.ref { text-decoration:none; }
a.ref:hover .chip { outline:1px solid var(--accent); }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th[aria-sort=ascending]::after { content:" ▲"; }
table.sortable th[aria-sort=descending]::after { content:" ▼"; }
footer { color:var(--muted); font-size:13px; margin-top:30px; }
.card-filter, .switch { margin:4px 0 12px; font-size:14px; color:var(--muted); }
.card-filter select, .switch select { margin:0 4px; }
[hidden] { display:none !important; }
.frame { position:relative; width:64px; height:64px; background-size:64px 64px; background-color:#000;
         print-color-adjust:exact; -webkit-print-color-adjust:exact; }
.frame img { display:block; width:64px; height:64px; opacity:0.55; border-radius:0; }
.pairs .pair { display:grid; grid-template-columns:1fr 60px 1fr; gap:10px; align-items:start; margin:0 0 12px; }
.pairs .sim { text-align:center; font-weight:600; padding-top:30px; }
.stale-banner { background:#fff3d6; border:1px solid var(--warn); border-radius:8px; padding:10px 14px; margin:0 0 16px; }
section.stale { border-color:var(--warn); }
@media print {
  nav.toc, .card-filter, .switch, .vega-bindings { display:none; }
  main { margin:0; padding:0; max-width:none; }
  body { background:#fff; font-size:11pt; }
  section { break-inside:auto; border:none; padding:0; margin:0 0 18pt; }
  h2, h3 { break-after:avoid; }
  .card, figure, tr, .ucard, .pair { break-inside:avoid; }
  .gallery { grid-template-columns:repeat(3, 1fr); }
  div[style*="overflow-x"] { overflow:visible !important; }
  .frame, .frame img { width:40px; height:40px; background-size:40px 40px; }
  table.film td { padding:2px 3px 2px 0; }
  table.film td.who { min-width:0; width:90px; font-size:9px; }
  table.film .cap { font-size:7px; }
  a { color:inherit; text-decoration:none; }
  details { display:block; }
  details > summary { display:none; }
}
@media (max-width: 900px) { nav.toc { position:static; width:auto; } main { margin-left:0; padding:16px; } }
"""
