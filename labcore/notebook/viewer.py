"""The attention viewer: plain JavaScript (no libraries, no network) embedded in the HTML report,
or shown inline in Jupyter.

A claim saves attention patterns with ``lab.save_attention(tokens, pattern, name)`` (see
``labcore.notebook.recorder``): one JSON file per snapshot, ``{"name", "tokens", "shape",
"pattern"}`` with ``pattern`` nested as (layers, heads, T, T). This module turns such snapshots
into a self-contained HTML fragment: the learner picks a layer and a head, hovers a token (the
query) to see where it attends (token backgrounds and the highlighted row of the heat map), and
compares two snapshots side by side (e.g. ``before`` / ``after`` training).

No torch, no numpy at import time: conversion of tensors and arrays happens inside
:func:`pattern_to_lists`, on the object handed in.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Decimals kept per attention weight in the JSON files (enough for a colour, small files).
DECIMALS = 4

VIEWER_CSS = """
.attn-viewer{border:1px solid #ccc;border-radius:6px;padding:.6em;margin:1em 0;background:#fafafa}
.attn-controls label{margin-right:1em;font-size:.9em}
.attn-panels{display:flex;flex-wrap:wrap;gap:1.5em;margin-top:.5em}
.attn-panel h4{margin:.2em 0}
.attn-tokens{max-width:32em;line-height:1.9;font-family:monospace}
.attn-tok{display:inline-block;padding:0 3px;margin:1px;border:1px solid #ddd;border-radius:3px;
 white-space:pre;cursor:pointer;background:#fff}
.attn-tok.attn-query{outline:2px solid #c62828}
.attn-caption{font-size:.85em;color:#444;margin-top:.3em}
.attn-heat{border:1px solid #999;image-rendering:pixelated;margin-top:.4em}
"""

VIEWER_JS = r"""
(function () {
  function colour(w) {
    var a = Math.max(0, Math.min(1, w));
    return "rgb(" + Math.round(255 - 215 * a) + "," + Math.round(255 - 150 * a) + ",255)";
  }
  function options(select, labels, chosen) {
    select.innerHTML = "";
    labels.forEach(function (label, i) {
      var o = document.createElement("option");
      o.value = String(i); o.textContent = label; select.appendChild(o);
    });
    select.value = String(chosen);
  }
  function control(box, text) {
    var label = document.createElement("label"), select = document.createElement("select");
    label.textContent = text + " "; label.appendChild(select); box.appendChild(label);
    return select;
  }
  function range(n, word) { var out = []; for (var i = 0; i < n; i++) out.push(word + " " + i); return out; }
  function rowMax(row) { var m = 0; for (var i = 0; i < row.length; i++) m = Math.max(m, row[i]); return m || 1; }

  function setup(root) {
    if (root.getAttribute("data-ready")) return;
    root.setAttribute("data-ready", "1");
    var snaps = JSON.parse(root.querySelector("script.attn-data").textContent).snapshots;
    if (!snaps.length) return;
    var shape = snaps[0].shape;
    var st = {layer: 0, head: 0, query: snaps[0].tokens.length - 1, left: 0, right: snaps.length > 1 ? 1 : -1};
    var box = root.querySelector(".attn-controls"), panels = root.querySelector(".attn-panels");
    var layer = control(box, "layer"), head = control(box, "head");
    function named(word, labels, n) { return labels ? labels.map(function (x) { return word + " " + x; }) : range(n, word); }
    options(layer, named("layer", snaps[0].layers, shape[0]), 0);
    options(head, named("head", snaps[0].heads, shape[1]), 0);
    var left = null, right = null, names = snaps.map(function (s) { return s.name; });
    if (snaps.length > 1) {
      left = control(box, "left"); right = control(box, "right");
      options(left, names, 0); options(right, names.concat(["(none)"]), 1);
    }
    function panel(index) {
      var snap = snaps[index], div = document.createElement("div");
      div.className = "attn-panel"; div.setAttribute("data-snapshot", snap.name);
      var title = document.createElement("h4"); title.textContent = snap.name; div.appendChild(title);
      var toks = document.createElement("div"); toks.className = "attn-tokens"; div.appendChild(toks);
      snap.tokens.forEach(function (t, i) {
        var span = document.createElement("span");
        span.className = "attn-tok"; span.textContent = t; span.setAttribute("data-i", String(i));
        span.addEventListener("mouseenter", function () { st.query = i; draw(); });
        toks.appendChild(span);
      });
      var caption = document.createElement("div"); caption.className = "attn-caption"; div.appendChild(caption);
      var canvas = document.createElement("canvas"); canvas.className = "attn-heat"; div.appendChild(canvas);
      var T = snap.tokens.length, cell = Math.max(3, Math.floor(220 / T));
      canvas.width = canvas.height = T * cell;
      canvas.addEventListener("mousemove", function (e) {
        var r = canvas.getBoundingClientRect(), q = Math.floor((e.clientY - r.top) / (r.height / T));
        if (q >= 0 && q < T && q !== st.query) { st.query = q; draw(); }
      });
      return {snap: snap, div: div, toks: toks, caption: caption, canvas: canvas, cell: cell};
    }
    var shown = [];
    function rebuild() {
      panels.innerHTML = "";
      shown = [st.left].concat(st.right >= 0 && st.right < snaps.length ? [st.right] : []).map(panel);
      shown.forEach(function (p) { panels.appendChild(p.div); });
      draw();
    }
    function draw() {
      shown.forEach(function (p) {
        var s = p.snap, l = Math.min(st.layer, s.shape[0] - 1), h = Math.min(st.head, s.shape[1] - 1);
        var m = s.pattern[l][h], T = s.tokens.length, q = Math.min(st.query, T - 1), row = m[q], top = rowMax(row);
        Array.prototype.forEach.call(p.toks.children, function (span, k) {
          span.style.background = colour(Math.sqrt(row[k]));
          span.title = "attention " + row[k].toFixed(3);
          span.classList.toggle("attn-query", k === q);
        });
        var ln = s.layers ? s.layers[l] : l, hn = s.heads ? s.heads[h] : h;
        p.caption.textContent = "layer " + ln + " \u00b7 head " + hn + " \u00b7 query #" + q + " " +
          JSON.stringify(s.tokens[q]) + " \u00b7 max weight " + top.toFixed(3) + " \u00b7 colour: \u221aweight";
        var ctx = p.canvas.getContext("2d"), c = p.cell;
        for (var i = 0; i < T; i++) for (var j = 0; j < T; j++) {
          ctx.fillStyle = colour(Math.sqrt(m[i][j])); ctx.fillRect(j * c, i * c, c, c);
        }
        ctx.strokeStyle = "#c62828"; ctx.lineWidth = 2; ctx.strokeRect(1, q * c + 1, T * c - 2, c - 2);
      });
      root.setAttribute("data-state", [st.layer, st.head, st.query, st.left, st.right].join(","));
    }
    layer.addEventListener("change", function () { st.layer = +layer.value; draw(); });
    head.addEventListener("change", function () { st.head = +head.value; draw(); });
    if (left) {
      left.addEventListener("change", function () { st.left = +left.value; rebuild(); });
      right.addEventListener("change", function () {
        st.right = +right.value < snaps.length ? +right.value : -1; rebuild();
      });
    }
    rebuild();
  }
  window.labAttentionSetup = function () {
    Array.prototype.forEach.call(document.querySelectorAll(".attn-viewer"), setup);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", window.labAttentionSetup);
  else window.labAttentionSetup();
})();
"""


# --- snapshots: converting and reading ----------------------------------------------------------


def pattern_to_lists(pattern: Any, n_tokens: int, decimals: int = DECIMALS) -> tuple[list[int], list]:
    """(shape, nested lists) of an attention pattern (layers, heads, T, T) given as a nested
    list, a numpy array or a torch tensor (converted here, lazily); (heads, T, T) counts as one
    layer. Raises ValueError on a shape that does not fit ``n_tokens``."""
    if hasattr(pattern, "detach"):  # a torch tensor: no torch import needed to convert it
        pattern = pattern.detach().float().cpu().numpy()
    if hasattr(pattern, "tolist"):
        pattern = pattern.tolist()
    shape = _nested_shape(pattern)
    if len(shape) == 3:
        pattern, shape = [pattern], [1, *shape]
    if len(shape) != 4 or shape[2] != n_tokens or shape[3] != n_tokens:
        raise ValueError(
            f"attention pattern of shape {tuple(shape)} does not fit {n_tokens} tokens: "
            f"expected (layers, heads, {n_tokens}, {n_tokens})"
        )
    return shape, [[[[round(float(w), decimals) for w in row] for row in mat] for mat in layer] for layer in pattern]


def _nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, (list, tuple)):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def snapshot(tokens: Sequence[object], pattern: Any, name: str, layers: Sequence[object] | None = None,
             heads: Sequence[object] | None = None) -> dict[str, Any]:
    """The JSON-ready snapshot the viewer reads. ``layers`` / ``heads`` name the pattern's layers
    and heads when it holds a subset (e.g. ``layers=[1, 14, 22]``); default: 0, 1, 2, ..."""
    token_texts = [str(token) for token in tokens]
    shape, nested = pattern_to_lists(pattern, len(token_texts))
    data = {"name": name, "tokens": token_texts, "shape": shape, "pattern": nested}
    for axis, (word, labels) in enumerate((("layers", layers), ("heads", heads))):
        if labels is None:
            continue
        if len(labels) != shape[axis]:
            raise ValueError(f"lab.save_attention: {word}= has {len(labels)} labels for {shape[axis]} {word} "
                             f"in a pattern of shape {tuple(shape)}: give one label per {word[:-1]}")
        data[word] = [str(label) for label in labels]
    return data


def write_snapshot(folder: Path, tokens: Sequence[object], pattern: Any, name: str,
                   layers: Sequence[object] | None = None, heads: Sequence[object] | None = None) -> Path:
    """Write ``<folder>/attention_<name>.json`` atomically and return its path."""
    from labcore.files import atomic_write_text

    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"lab.save_attention: name {name!r} must be a plain name such as 'after' (letters, digits, - _)")
    data = snapshot(tokens, pattern, name, layers, heads)
    return atomic_write_text(Path(folder) / f"attention_{name}.json", json.dumps(data, separators=(",", ":")))


def load_snapshots(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Read snapshot files; unreadable ones are skipped (a report never fails on one file)."""
    snapshots = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"tokens", "pattern", "shape"} <= set(data):
            snapshots.append({"name": str(data.get("name", Path(path).stem)), "tokens": data["tokens"],
                              "shape": data["shape"], "pattern": data["pattern"],
                              **{k: data[k] for k in ("layers", "heads") if isinstance(data.get(k), list)}})
    return snapshots


# --- HTML ------------------------------------------------------------------------------------------


def viewer_div(snapshots: Sequence[dict[str, Any]], title: str = "") -> str:
    """One viewer: a div with its data; needs :data:`VIEWER_CSS` and :data:`VIEWER_JS` on the page."""
    data = json.dumps({"snapshots": list(snapshots)}, separators=(",", ":")).replace("</", "<\\/")
    names = ", ".join(str(s["name"]) for s in snapshots)
    heading = f"<b>Attention{': ' + html.escape(title) if title else ''}</b> ({html.escape(names)}) — " \
              "pick a layer and head, hover a token (or a heat-map row) to see where it attends"
    return (f"<div class='attn-viewer'><div>{heading}</div><div class='attn-controls'></div>"
            f"<div class='attn-panels'></div><script type='application/json' class='attn-data'>{data}</script></div>")


def viewer_assets() -> str:
    """The style and script every page with viewers needs once."""
    return f"<style>{VIEWER_CSS}</style>\n<script>{VIEWER_JS}</script>"


def attention_html(snapshots: Sequence[dict[str, Any] | Path | str], title: str = "") -> str:
    """A self-contained fragment (style, script, data) for snapshots or snapshot files."""
    loaded = [s for s in snapshots if isinstance(s, dict)] + load_snapshots(
        s for s in snapshots if not isinstance(s, dict))
    return viewer_div(loaded, title) + "\n" + viewer_assets()


def show_attention(snapshots: Sequence[dict[str, Any] | Path | str], title: str = "") -> Any:
    """The viewer inline in Jupyter (an ``IPython.display.HTML``), or the HTML string without IPython.

    ``show_attention([snapshot(tokens, pattern, "after")])`` or with the JSON files a claim saved.
    """
    fragment = attention_html(snapshots, title)
    try:
        from IPython.display import HTML
    except ImportError:
        return fragment
    return HTML(fragment)
