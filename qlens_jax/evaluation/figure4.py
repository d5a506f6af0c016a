"""The paper's Fig. 4 from `evaluated_features.json`: one self-contained HTML report and a PNG.

Per feature, two rows: its key tokens (a key-side lens, Query Lens key by default) beside its
top activating contexts with the maximal token marked, and its value tokens (a value-side lens,
Query Lens value by default) beside the prefixes continued under steering at each KL target.
The HTML has no script and loads nothing: every string from the run (token strings are the
model's, untrusted) is escaped. The PNG draws the same content with matplotlib.
"""

from __future__ import annotations

import html
import re
import warnings
from pathlib import Path

from qlens_jax.errors import InputError

KEY_LENSES = ("query_lens_key", "first_order_key", "logit_lens_key")
VALUE_LENSES = ("query_lens_value", "first_order_value", "logit_lens_value")
SHOWN_TOKENS = 10  # lens tokens shown per feature

_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}
th{background:#f3f3f3}.tokens{width:22%}.tok{white-space:pre-wrap;font-family:monospace}
mark{background:#ffd54f;font-weight:bold}.gen{color:#1565c0}.note{color:#666;font-size:90%}"""


def _pick(record: dict, wanted: str | None, candidates: tuple[str, ...]) -> dict | None:
    lenses = {lens["lens"]: lens for lens in record["lenses"]}
    for name in (wanted,) if wanted else candidates:
        if name in lenses:
            return lenses[name]
    return None


def _scores(lens: dict) -> str:
    return " · ".join(
        f"{name} {lens[key]:.2f}"
        for name, key in (("I(T)", "input_score"), ("O(T)", "output_score"))
        if lens.get(key) is not None
    )


def _tokens_cell(lens: dict | None) -> str:
    if lens is None:
        return '<td class="tokens note">(lens not evaluated)</td>'
    shown = ", ".join(f'<span class="tok">{html.escape(t)}</span>' for t in lens["tokens"][:SHOWN_TOKENS])
    scores = _scores(lens)
    return (
        f'<td class="tokens"><b>{html.escape(lens["lens"])}</b><br>{shown}<br><span class="note">{scores}</span></td>'
    )


def _context_html(context: dict) -> str:
    parts = []
    for i, token in enumerate(context["tokens"]):
        text = html.escape(token)
        parts.append(f"<mark>{text}</mark>" if i == context["marked"] else text)
    return f'<div class="tok">{"".join(parts)}</div>'


def _steering_html(steering: list[dict]) -> str:
    blocks = []
    for level in steering:
        alpha = "–" if level["alpha"] is None else f"{level['alpha']:.3g}"
        lines = "".join(
            f'<div class="tok">{html.escape("".join(g["prefix"]))}'
            f'<span class="gen">{html.escape("".join(g["continuation"]))}</span></div>'
            for g in level["generations"]
        )
        blocks.append(f"<div><b>KL {level['kl_target']:g}</b> (α = {alpha}){lines}</div>")
    return "".join(blocks)


def figure4_html(document: dict, key_lens: str | None = None, value_lens: str | None = None) -> str:
    """The report of `document` (the contents of `evaluated_features.json`) as one HTML page."""
    rows = []
    for record in document["features"]:
        contexts = (
            "".join(_context_html(c) for c in record["contexts"]) or '<span class="note">no active context</span>'
        )
        rows.append(
            f'<tr><th colspan="2">{html.escape(record["feature_str"])}</th></tr>'
            f"<tr>{_tokens_cell(_pick(record, key_lens, KEY_LENSES))}<td>{contexts}</td></tr>"
            f"<tr>{_tokens_cell(_pick(record, value_lens, VALUE_LENSES))}"
            f"<td>{_steering_html(record['steering'])}</td></tr>"
        )
    title = f"Query Lens features of {document.get('model') or 'a model'}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="note">Key tokens beside the top activating contexts '
        "(the maximal token marked); value tokens beside the prefixes continued under steering (the "
        "continuation in blue) at each KL target.</p>"
        f"<table>{''.join(rows)}</table></body></html>\n"
    )


def _printable(text: str) -> str:
    """`text` with newlines, tabs and other control characters written as escapes, for the PNG."""
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def _wrap(text: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(_printable(text), width)) or " "


def write_figure4_png(path: Path, document: dict, key_lens: str | None = None, value_lens: str | None = None) -> Path:
    """The same content as `figure4_html`, drawn as text panels with matplotlib (the maximal
    token of each context in [[brackets]], the continuation after a `|`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = document["features"]
    fig, axes = plt.subplots(
        2 * len(records), 2, figsize=(14, 1.9 * len(records) + 0.5), squeeze=False, width_ratios=(1, 3)
    )
    for r, record in enumerate(records):
        contexts = "\n".join(
            _wrap("".join(f"[[{t}]]" if i == c["marked"] else t for i, t in enumerate(c["tokens"])))
            for c in record["contexts"][:3]
        )
        steering = "\n".join(
            f"KL {level['kl_target']:g}: " + _wrap("".join(g["prefix"]) + " | " + "".join(g["continuation"]))
            for level in record["steering"]
            for g in level["generations"][:1]
        )
        for row, (lens, right) in enumerate(
            (
                (_pick(record, key_lens, KEY_LENSES), contexts or "(no active context)"),
                (_pick(record, value_lens, VALUE_LENSES), steering or "(no generation)"),
            )
        ):
            left_ax, right_ax = axes[2 * r + row]
            left = (
                "(lens not evaluated)"
                if lens is None
                else f"{lens['lens']} ({_scores(lens)})\n" + _wrap(", ".join(lens["tokens"][:SHOWN_TOKENS]), 30)
            )
            for ax, text in ((left_ax, left), (right_ax, right)):
                ax.axis("off")
                ax.text(0, 0.88, text, va="top", ha="left", fontsize=7, family="monospace", parse_math=False)
            if row == 0:  # token strings are the model's: no mathtext, whatever they hold
                left_ax.text(0, 1, record["feature_str"], va="top", fontsize=9, weight="bold", parse_math=False)
    with warnings.catch_warnings():  # a token the font has no glyph for is drawn as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_figure4(
    out: Path, document: dict, key_lens: str | None = None, value_lens: str | None = None, max_features: int = 8
) -> dict[str, Path]:
    """Write `figure4.html` and `figure4.png` for the first `max_features` features of `document`."""
    if max_features < 1:
        raise InputError(f"--figure4-features {max_features}: must be at least 1")
    shown = {**document, "features": document["features"][:max_features]}
    if not shown["features"]:
        return {}
    out = Path(out)
    (out / "figure4.html").write_text(figure4_html(shown, key_lens, value_lens), encoding="utf-8")
    return {
        "figure4_html": out / "figure4.html",
        "figure4_png": write_figure4_png(out / "figure4.png", shown, key_lens, value_lens),
    }
