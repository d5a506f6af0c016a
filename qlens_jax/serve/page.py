"""The page of `qlens serve`: the viewer's look, its data fetched from the JSON API.

Queries typed in the box (and kept in the URL fragment, `#q=...`, so that they can be linked
to): `123` (feature 123 of every dictionary), `L3/123`, `NAME/3/123` or `Feature NAME/3/123`;
`promotes:TOKEN` / `activated-by:TOKEN` (reverse lookup: every feature ranked by the token's
exact Query Lens value / key score); `token:TEXT` or any other text (features with the token in
a stored top-k or bottom-k list of any lens). Tokens in a feature's lists link to the reverse
lookup of that token on that side. Every request carries `REQUEST_HEADER`, which the costly
routes require (a page of another site cannot send it here).
"""

from __future__ import annotations

from qlens_jax.viewer.page import CSS as VIEWER_CSS, html_page

REQUEST_HEADER = "X-Qlens-Request"

CSS = (
    VIEWER_CSS
    + """
table.hits { border-collapse: collapse; width: 100%; font-size: .85rem; }
table.hits th, table.hits td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid var(--line); }
table.hits td.num { font-family: ui-monospace, monospace; text-align: right; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
ol.tokens li a { color: inherit; }
#error { color: #c62828; }
section.evaluation .context, section.evaluation .generation { font-family: ui-monospace, monospace; font-size: .85rem; white-space: pre-wrap; margin: .15rem 0; }
section.evaluation mark { background: #ffd54f; font-weight: bold; }
section.evaluation .continuation { color: var(--accent); }
"""
)

JS = r"""
"use strict";
const LENS_TITLES = {query_lens: "Query Lens", first_order: "First order", logit_lens: "Logit Lens"};
const FAMILIES = ["query_lens", "first_order", "logit_lens"];
let RUN = null;

function visible(s) {
  return s.replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5")
    .replace(/[\x00-\x1f\x7f]/g, c => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0")) || "\u2205";
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}
function link(query, text) { return el("a", {href: "#q=" + encodeURIComponent(query)}, text); }
async function api(path, params) {
  const response = await fetch(path + "?" + new URLSearchParams(params), {headers: {"REQUEST_HEADER": "page"}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function tokenList(cls, lens, side, list) {
  const node = el("ol", {class: `tokens ${cls}`, "data-lens": lens});
  const verb = side === "value" ? "promotes" : "activated-by";
  list.ids.forEach((id, i) => {
    const item = el("li", {"data-id": String(id), title: `id ${id}, score ${list.scores[i].toPrecision(4)}; click: features ranked by this token (${verb})`});
    item.append(link(`${verb}:id:${id}`, visible(list.tokens[i])));
    node.append(item);
  });
  return node;
}

function card(feature) {
  const node = el("article", {class: "feature", "data-feature-str": feature.feature_str, "data-layer": String(feature.layer),
                              "data-feature": String(feature.feature), "data-dictionary": String(feature.dictionary_index)});
  node.append(el("h2", {}, feature.feature_str));
  const sides = el("div", {class: "sides"});
  for (const side of ["key", "value"]) {
    const column = el("section", {class: "side", "data-side": side});
    column.append(el("h3", {}, `${side} \u2014 ${feature.dictionary}, layer ${feature.layer}`));
    const lenses = el("div", {class: "lenses"});
    for (const family of FAMILIES) {
      const lens = `${family}_${side}`;
      const data = feature.lenses[lens];
      if (!data) continue;
      const box = el("div", {class: "lens", "data-lens": lens});
      box.append(el("h4", {}, LENS_TITLES[family]));
      box.append(el("h5", {}, "top"), tokenList("top", lens, side, data.top));
      box.append(el("h5", {}, "bottom"), tokenList("bottom", lens, side, data.bottom));
      lenses.append(box);
    }
    if (lenses.childElementCount) { column.append(lenses); sides.append(column); }
  }
  node.append(sides);
  if (RUN && RUN.evaluated) node.append(evaluation(feature));
  return node;
}

function score(x) { return x === null || x === undefined ? "\u2013" : x.toFixed(3); }

function evaluation(feature) {
  const box = el("section", {class: "evaluation"}, el("h3", {}, "evaluation"));
  api("/api/evaluated", {dictionary: String(feature.dictionary_index), feature: String(feature.feature)})
    .then(r => showEvaluation(box, r))
    .catch(e => box.append(el("p", {class: "missing"}, e.message)));
  return box;
}

function showEvaluation(box, r) {
  const head = el("tr", {}, ...["lens", "I(T)", "O(T)", "O(T) 95% interval", "judge"].map(c => el("th", {}, c)));
  const rows = r.lenses.map(l => el("tr", {"data-lens": l.lens}, el("td", {}, l.lens),
    ...[score(l.input_score), score(l.output_score),
        l.output_score_lo95 === null ? "\u2013" : `${score(l.output_score_lo95)} \u2013 ${score(l.output_score_hi95)}`,
        score(l.judge_score)].map(v => el("td", {class: "num"}, v))));
  box.append(el("h4", {}, "scores"), el("table", {class: "hits scores"}, el("thead", {}, head), el("tbody", {}, ...rows)));
  box.append(el("h4", {}, `activating contexts (${r.active_contexts} active)`));
  for (const c of r.contexts) {
    const line = el("div", {class: "context"});
    c.tokens.forEach((t, i) => line.append(i === c.marked ? el("mark", {}, t) : t));
    box.append(line);
  }
  box.append(el("h4", {}, "steered continuations"));
  for (const level of r.steering) {
    box.append(el("h5", {}, `KL ${level.kl_target}` + (level.alpha === null ? "" : ` (\u03b1 = ${level.alpha.toPrecision(3)})`)));
    for (const g of level.generations) {
      box.append(el("div", {class: "generation"}, g.prefix.join(""), el("span", {class: "continuation"}, g.continuation.join(""))));
    }
  }
}

function featureQuery(hit) { return `${hit.dictionary}/${hit.layer}/${hit.feature}`; }

function table(kind, columns, rows) {
  const head = el("tr", {}, ...columns.map(c => el("th", {}, c[0])));
  const body = rows.map(row => el("tr", {"data-feature": featureQuery(row)}, ...columns.map(c => {
    const cell = el("td", c[2] ? {class: "num"} : {});
    cell.append(c[1](row));
    return cell;
  })));
  return el("table", {class: `hits ${kind}`}, el("thead", {}, head), el("tbody", {}, ...body));
}

async function features(dictionaries, id) {
  const found = [];
  for (const d of dictionaries) {
    try { found.push(await api("/api/feature", {dictionary: String(d.index), feature: String(id)})); }
    catch (e) { if (dictionaries.length === 1) throw e; }
  }
  return found;
}

async function search(q) {
  let m;
  if (!q) {
    const d = RUN.dictionaries[0];
    const page = await api("/api/features", {dictionary: String(d.index), limit: "20"});
    return {what: `the first features of ${d.name} (layer ${d.layer})`, nodes: page.features.map(card), count: page.features.length};
  }
  if ((m = q.match(/^(promotes|activated-by):(.+)$/s))) {
    const side = m[1] === "promotes" ? "value" : "key";
    const r = await api("/api/reverse", {token: m[2], side, top: "50"});
    const hits = r.hits.map(h => ({...h, feature_str: featureQuery(h)}));
    const columns = [["rank", h => String(h.rank), true], ["feature", h => link(featureQuery(h), featureQuery(h))],
                     ["layer", h => String(h.layer), true], [`${side} score of \u201c${r.token}\u201d`, h => h.score.toPrecision(5), true]];
    return {what: `${m[1]} \u201c${visible(r.token)}\u201d (id ${r.token_id}): exact Query Lens ${side} score over ${r.features_scored} features in ${r.seconds} s`,
            nodes: [table("reverse", columns, hits)], count: r.hits.length};
  }
  if ((m = q.match(/^\d+$/))) {
    const found = await features(RUN.dictionaries, Number(q));
    return {what: `feature ${q}`, nodes: found.map(card), count: found.length};
  }
  if ((m = q.match(/^L?(\d+)\/(\d+)$/i))) {
    const at = RUN.dictionaries.filter(d => d.layer === Number(m[1]));
    const found = await features(at, Number(m[2]));
    return {what: `feature ${m[2]} at layer ${m[1]}`, nodes: found.map(card), count: found.length};
  }
  if ((m = q.match(/^(?:Feature\s+)?(.+)\/(\d+)\/(\d+)$/))) {
    const f = await api("/api/feature", {q: q});
    return {what: f.feature_str, nodes: [card(f)], count: 1};
  }
  const text = q.startsWith("token:") ? q.slice(6) : q;
  const r = await api("/api/search", {token: text, limit: "50"});
  const columns = [["feature", h => link(featureQuery(h), h.feature_str)], ["lens", h => h.lens], ["list", h => h.side],
                   ["rank", h => String(h.rank), true], ["score", h => h.score.toPrecision(4), true]];
  const more = r.total > r.hits.length ? ` (showing the first ${r.hits.length})` : "";
  return {what: `token \u201c${text.trim()}\u201d in a stored top-${RUN.k} or bottom-${RUN.k} list${more}`,
          nodes: [table("search", columns, r.hits)], count: r.total};
}

async function show(query) {
  const status = document.getElementById("status"), error = document.getElementById("error");
  const results = document.getElementById("results");
  status.textContent = "\u2026";
  status.removeAttribute("data-count");
  error.textContent = "";
  try {
    const {what, nodes, count} = await search(query.trim());
    results.replaceChildren(...nodes);
    status.textContent = `${count} match${count === 1 ? "" : "es"} for ${what}`;
    status.setAttribute("data-count", String(count));
  } catch (e) {
    results.replaceChildren();
    error.textContent = e.message;
    status.textContent = "";
    status.setAttribute("data-count", "-1");
  }
}

function queryFromHash() { return new URLSearchParams(location.hash.slice(1)).get("q") || ""; }

async function start() {
  RUN = await api("/api/run", {});
  document.getElementById("summary").textContent =
    `${RUN.status} run \u00b7 ${RUN.dictionaries.map(d => `${d.name} (layer ${d.layer}, ${d.features} features)`).join(", ")} \u00b7 lenses: ${RUN.lenses.join(", ")}`;
  const box = document.getElementById("search");
  let timer = null;
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { history.replaceState(null, "", "#q=" + encodeURIComponent(box.value)); show(box.value); }, 300);
  });
  window.addEventListener("hashchange", () => { box.value = queryFromHash(); show(box.value); });
  box.value = queryFromHash();
  await show(box.value);
}
start();
"""


def render(title: str) -> str:
    """The page (no data in it: everything comes from the API)."""
    placeholder = (
        "feature (123, L3/123, NAME/3/123), token (the), or a reverse lookup (promotes: Paris, activated-by: Paris)"
    )
    return html_page(
        title, placeholder, JS.replace("REQUEST_HEADER", REQUEST_HEADER), notices='<p id="error"></p>\n', css=CSS
    )
