"""``lineage.html``: a self-contained static page (no CDN, no server) to walk the lineage.

The tree shows every harness (root and candidates) with its validation pass rate and the
delta to its parent; iterations that produced no candidate (invalid edits) appear as leaves
under their parent. Selecting a node shows its diff from the parent (``git diff``), the
analysis that motivated it, and its history status and reason. ``lineage.html#<short sha>``
or ``#iter-N`` opens with that node selected.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import git

from analysis.loaders import MetaRunRecords


def lineage_nodes(meta: MetaRunRecords) -> list[dict[str, Any]]:
    """The nodes of the tree: ``id``, ``parent``, ``label``, ``iteration``, ``status``,
    ``val``, ``delta``, ``analysis``, ``reason``, ``diff``, ``commit``, and the admission
    statistic ``T`` (documents) and sign-flip p-value ``p`` (``None`` under the strict rule)."""
    repo = git.Repo(meta.path / "lineage")
    root = repo.commit("refs/heads/main")
    nodes = [
        {
            "id": root.hexsha[:10], "parent": None, "iteration": 0, "status": "root", "commit": root.hexsha,
            "val": meta.baseline, "delta": None, "analysis": "", "reason": root.message.strip(), "diff": "",
        }
    ]  # fmt: skip
    for h in sorted(meta.history, key=lambda h: h["iteration"]):
        parent = (h.get("parent") or root.hexsha)[:10]
        cand = h.get("candidate")
        val, pval = h.get("candidate_val"), h.get("parent_val")
        diff = repo.git.diff(h["parent"], cand) if cand else ""
        nodes.append(
            {
                "id": cand[:10] if cand else f"iter-{h['iteration']}",
                "parent": parent,
                "iteration": h["iteration"],
                "status": h["status"],
                "commit": cand,
                "val": val,
                "delta": (val - pval) if val is not None and pval is not None else None,
                "analysis": h.get("analysis") or "",
                "reason": h.get("reason") or "",
                "diff": diff or (h.get("implementer_reply") or ""),
                "diff_summary": h.get("diff_summary") or "",
                "T": h.get("T"),
                "p": h.get("p_value"),
            }
        )
    return nodes


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Autodata lineage — $TITLE</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#tree{width:38%;overflow:auto;padding:12px;border-right:1px solid #ddd;background:#fafafa}
#detail{flex:1;overflow:auto;padding:12px}
ul{list-style:none;padding-left:18px;margin:0}
li{margin:2px 0}
.node{cursor:pointer;border:1px solid #ccc;border-radius:4px;padding:2px 6px;background:#fff;font-size:13px;display:inline-block}
.node.selected{outline:2px solid #1f6feb}
.admitted,.root{border-color:#2da44e}.rejected{border-color:#999;color:#555}
.invalid-edit,.crashed{border-color:#cf222e;color:#cf222e}
.pos{color:#2da44e}.neg{color:#cf222e}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;white-space:pre-wrap}
.add{color:#116329;background:#dafbe1}.del{color:#82071e;background:#ffebe9}
.hunk{color:#0550ae}
h1{font-size:16px}h2{font-size:14px;margin-top:16px}
</style></head><body>
<div id="tree"><h1>Lineage — $TITLE</h1><div id="treeroot"></div></div>
<div id="detail"><p>Select a harness in the tree.</p></div>
<script type="application/json" id="data">$DATA</script>
<script>
const nodes = JSON.parse(document.getElementById('data').textContent);
const byParent = {};
nodes.forEach(n => { (byParent[n.parent] = byParent[n.parent] || []).push(n); });
function fmt(x){ return x === null || x === undefined ? 'n/a' : x.toFixed(3); }
function esc(s){ return String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c])); }
function label(n){
  let d = '';
  if (n.delta !== null && n.delta !== undefined) {
    d = ' <span class="' + (n.delta > 0 ? 'pos' : n.delta < 0 ? 'neg' : '') + '">(' + (n.delta >= 0 ? '+' : '') + n.delta.toFixed(3) + ')</span>';
  }
  const name = n.iteration === 0 ? 'root' : 'iter ' + n.iteration;
  const stat = (n.T !== null && n.T !== undefined) ? ' · T=' + n.T.toFixed(2) + (n.p !== null && n.p !== undefined ? ' p=' + n.p.toFixed(3) : '') : '';
  return name + ' · ' + fmt(n.val) + d + stat + ' · ' + n.status;
}
function build(parentId, el){
  const kids = byParent[parentId] || [];
  if (!kids.length) return;
  const ul = document.createElement('ul');
  kids.sort((a, b) => a.iteration - b.iteration).forEach(n => {
    const li = document.createElement('li');
    const span = document.createElement('span');
    span.className = 'node ' + n.status; span.id = 'node-' + n.id; span.dataset.id = n.id;
    span.innerHTML = label(n);
    span.onclick = () => select(n.id);
    li.appendChild(span); build(n.id, li); ul.appendChild(li);
  });
  el.appendChild(ul);
}
function colorDiff(text){
  return text.split('\\n').map(l => {
    const e = esc(l);
    if (l.startsWith('+') && !l.startsWith('+++')) return '<span class="add">' + e + '</span>';
    if (l.startsWith('-') && !l.startsWith('---')) return '<span class="del">' + e + '</span>';
    if (l.startsWith('@@')) return '<span class="hunk">' + e + '</span>';
    return e;
  }).join('\\n');
}
function select(id){
  const n = nodes.find(x => x.id === id); if (!n) return;
  document.querySelectorAll('.node.selected').forEach(x => x.classList.remove('selected'));
  const el = document.getElementById('node-' + id); if (el) el.classList.add('selected');
  const parent = n.parent ? n.parent : 'none';
  document.getElementById('detail').innerHTML =
    '<h1 id="detail-title">' + esc(n.iteration === 0 ? 'Root harness' : 'Iteration ' + n.iteration) + ' — ' + esc(n.status) + '</h1>' +
    '<p>commit <code>' + esc(n.commit || 'none (no candidate)') + '</code>, parent <code>' + esc(parent) + '</code>; ' +
    '$LABEL ' + fmt(n.val) + (n.delta !== null && n.delta !== undefined ? ' (delta ' + n.delta.toFixed(3) + ')' : '') + '</p>' +
    (n.reason ? '<h2>Status</h2><p id="detail-reason">' + esc(n.reason) + '</p>' : '') +
    (n.analysis ? '<h2>Analysis that motivated it</h2><pre id="detail-analysis">' + esc(n.analysis) + '</pre>' : '') +
    '<h2>Diff from parent ' + esc(n.diff_summary || '') + '</h2><pre id="detail-diff">' + (n.diff ? colorDiff(n.diff) : '(no diff)') + '</pre>';
  history.replaceState(null, '', '#' + id);
}
build(null, document.getElementById('treeroot'));
const want = decodeURIComponent(location.hash.slice(1));
select(want && nodes.some(n => n.id === want) ? want : nodes[nodes.length - 1].id);
</script></body></html>
"""


def write_lineage_html(meta: MetaRunRecords, out_dir: Path) -> Path:
    """Write ``lineage.html`` (self-contained) and return its path."""
    data = json.dumps(lineage_nodes(meta)).replace("</", "<\\/")
    page = PAGE.replace("$TITLE", html.escape(meta.path.name)).replace("$LABEL", html.escape(meta.score_label))
    page = page.replace("$DATA", data)
    path = out_dir / "lineage.html"
    path.write_text(page, encoding="utf-8")
    return path
