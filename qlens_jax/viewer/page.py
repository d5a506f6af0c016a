"""The viewer page: one HTML file, its CSS and JavaScript inline, the data as embedded JSON.

The page reads its search from the URL fragment (`#q=...`) on load and keeps the fragment
in step with the search box, so a search can be linked to (and driven by a headless browser).
Queries: `123` (feature 123 of every dictionary), `3/123` or `L3/123` (layer 3),
`resid-post-1k/3/123` or `Feature resid-post-1k/3/123`, `token:xyz` or any other text
(features with the token in a top-k list of any lens; case and surrounding spaces ignored).
"""

from __future__ import annotations

import html
import json

CSS = """
:root { --fg:#1d1d1f; --muted:#6e6e73; --line:#d2d2d7; --bg:#fff; --card:#f5f5f7; --accent:#0a66c2; }
@media (prefers-color-scheme: dark) { :root { --fg:#f5f5f7; --muted:#a1a1a6; --line:#424245; --bg:#1d1d1f; --card:#2c2c2e; --accent:#4ea1ff; } }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 1400px; padding: 1rem; }
header h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
header p { color: var(--muted); margin: 0 0 .75rem; }
#search { width: 100%; box-sizing: border-box; font-size: 1rem; padding: .5rem .7rem; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--fg); }
#status { color: var(--muted); margin: .5rem 0 1rem; }
article.feature { background: var(--card); border-radius: 8px; padding: .75rem 1rem; margin-bottom: 1rem; }
article.feature h2 { font-size: 1rem; margin: 0 0 .5rem; font-family: ui-monospace, monospace; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.side h3 { font-size: .9rem; margin: 0 0 .25rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.lenses { display: flex; gap: .75rem; flex-wrap: wrap; }
.lens { flex: 1 1 12rem; min-width: 10rem; }
.lens h4 { font-size: .85rem; margin: 0 0 .2rem; color: var(--accent); }
.lens h5 { font-size: .75rem; margin: .4rem 0 .1rem; color: var(--muted); font-weight: normal; }
ol.tokens { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 3px; }
ol.tokens li { font-family: ui-monospace, monospace; font-size: .8rem; border: 1px solid var(--line); border-radius: 4px; padding: 0 4px; white-space: pre; }
ol.bottom li { opacity: .75; }
@media (max-width: 800px) { .sides { grid-template-columns: 1fr; } }
"""

JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("qlens-data").textContent);
const LENS_TITLES = {query_lens: "Query Lens", first_order: "First order", logit_lens: "Logit Lens"};
const FAMILIES = ["query_lens", "first_order", "logit_lens"];
const MAX_SHOWN = 50;
let tokenIndex = null;

function norm(s) { return s.trim().toLowerCase(); }
function visible(s) {
  return s.replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5")
    .replace(/[\x00-\x1f\x7f]/g, c => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0")) || "\u2205";
}

function buildTokenIndex() {
  tokenIndex = new Map();
  DATA.features.forEach((feature, position) => {
    for (const lens of Object.keys(feature.L)) {
      feature.L[lens][0].forEach((id, rank) => {
        const key = norm(DATA.tokens[id]);
        if (!key) return;
        const hits = tokenIndex.get(key) || new Map();
        hits.set(position, Math.min(rank, hits.has(position) ? hits.get(position) : Infinity));
        tokenIndex.set(key, hits);
      });
    }
  });
}

function byToken(text) {
  if (tokenIndex === null) buildTokenIndex();
  const hits = tokenIndex.get(norm(text));
  if (!hits) return [];
  return [...hits.entries()].sort((a, b) => a[1] - b[1] || a[0] - b[0]).map(([p]) => DATA.features[p]);
}

function search(query) {
  const q = query.trim();
  if (!q) return {features: DATA.features.slice(0, 20), what: "the first features"};
  if (q.startsWith("token:")) {
    const t = q.slice(6);
    return {features: byToken(t), what: `features with token \u201c${t.trim()}\u201d in a top-${DATA.run.k} list`};
  }
  let m;
  if ((m = q.match(/^\d+$/))) {
    const f = Number(q);
    return {features: DATA.features.filter(e => e.f === f), what: `feature ${f}`};
  }
  if ((m = q.match(/^L?(\d+)\/(\d+)$/i))) {
    const layer = Number(m[1]), f = Number(m[2]);
    return {features: DATA.features.filter(e => e.layer === layer && e.f === f), what: `feature ${f} at layer ${layer}`};
  }
  if ((m = q.match(/^(?:Feature\s+)?(.+)\/(\d+)\/(\d+)$/))) {
    const s = `Feature ${m[1]}/${m[2]}/${m[3]}`;
    return {features: DATA.features.filter(e => e.s === s), what: s};
  }
  return {features: byToken(q), what: `features with token \u201c${q}\u201d in a top-${DATA.run.k} list`};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function tokenList(cls, lens, ids, scores) {
  const list = el("ol", {class: `tokens ${cls}`, "data-lens": lens});
  ids.forEach((id, i) => {
    const item = el("li", {"data-id": String(id), title: `id ${id}, score ${scores[i]}`});
    item.textContent = visible(DATA.tokens[id]);
    list.append(item);
  });
  return list;
}

function card(feature) {
  const dictionary = DATA.dictionaries[feature.d];
  const node = el("article", {class: "feature", "data-feature-str": feature.s, "data-layer": String(feature.layer), "data-feature": String(feature.f)});
  node.append(el("h2", {}, feature.s));
  const sides = el("div", {class: "sides"});
  for (const side of ["key", "value"]) {
    const column = el("section", {class: "side", "data-side": side});
    column.append(el("h3", {}, `${side} \u2014 ${dictionary.name}, layer ${dictionary.layer}`));
    const lenses = el("div", {class: "lenses"});
    for (const family of FAMILIES) {
      const lens = `${family}_${side}`;
      const data = feature.L[lens];
      if (!data) continue;
      const box = el("div", {class: "lens", "data-lens": lens});
      box.append(el("h4", {}, LENS_TITLES[family]));
      box.append(el("h5", {}, "top"), tokenList("top", lens, data[0], data[1]));
      box.append(el("h5", {}, "bottom"), tokenList("bottom", lens, data[2], data[3]));
      lenses.append(box);
    }
    if (lenses.childElementCount) { column.append(lenses); sides.append(column); }
  }
  node.append(sides);
  return node;
}

function show(query) {
  const {features, what} = search(query);
  const results = document.getElementById("results");
  results.replaceChildren(...features.slice(0, MAX_SHOWN).map(card));
  const more = features.length > MAX_SHOWN ? ` (showing the first ${MAX_SHOWN})` : "";
  const status = document.getElementById("status");
  status.textContent = `${features.length} match${features.length === 1 ? "" : "es"} for ${what}${more}`;
  status.setAttribute("data-count", String(features.length));
}

function queryFromHash() { return new URLSearchParams(location.hash.slice(1)).get("q") || ""; }

const box = document.getElementById("search");
let timer = null;
box.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => { history.replaceState(null, "", "#q=" + encodeURIComponent(box.value)); show(box.value); }, 150);
});
window.addEventListener("hashchange", () => { box.value = queryFromHash(); show(box.value); });
document.getElementById("summary").textContent =
  `${DATA.features.length} features \u00b7 ${Object.values(DATA.dictionaries).map(d => `${d.name} (layer ${d.layer})`).join(", ")} \u00b7 lenses: ${DATA.lenses.join(", ")} \u00b7 sample ${DATA.run.sample ? DATA.run.sample.join(" \u00d7 ") : "?"}`;
box.value = queryFromHash();
show(box.value);
"""


def _embed(data: dict) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def html_page(
    title: str, placeholder: str, script: str, notices: str = "", data_script: str = "", css: str = CSS
) -> str:
    """The page shell the viewer and `qlens serve` share: header, search box, status line,
    results, then `data_script` (embedded data, if any) and `script`; `css` is the viewer's unless
    given. `title` is escaped here."""
    title = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p id="summary"></p>
</header>
<input id="search" type="search" autofocus placeholder="{placeholder}">
<p id="status"></p>
{notices}<main id="results"></main>
{data_script}<script>{script}</script>
</body>
</html>
"""


def render(data: dict) -> str:
    """The self-contained viewer: the signatures embedded as JSON."""
    return html_page(
        data["title"],
        "feature index (123), layer/feature (3/123), feature string, or a token (token:the)",
        JS,
        data_script=f'<script type="application/json" id="qlens-data">{_embed(data)}</script>\n',
    )
