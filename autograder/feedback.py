"""Feedback a student can read and an instructor can hand out: one HTML page per notebook.

The page lists every graded test: its grade_id, points earned and possible, PASS or FAIL and the
message. A failure in the visible tests shows the check's message (the student saw the same one in
their notebook); a failure in the hidden tests says only that a hidden test failed and which check,
never its source, inputs, expected values or hint. Below comes the student's notebook as static
HTML: markdown rendered (a Mermaid diagram as its text), code, text outputs and PNG/JPEG images; a
widget as its text form with a note; HTML and SVG outputs as their text form (no student markup or
script reaches the instructor's browser). Test cells show only their visible part. Every absolute
path of the grading machine is replaced by `<path>`.
"""

from __future__ import annotations

import html
import re

from nbformat.notebooknode import NotebookNode

from autograder.executor import is_test_cell, split_test

# an absolute path: one of the usual top folders, or any path of two or more parts (/check/work/x.py);
# a URL's path (https://host/a/b) and a ratio (tok/s, 1/2) are not preceded by a space or bracket
_PATH = re.compile(
    r"(?<![\w.:/])/(?:[\w.@+~-]+/)+[^\s'\"`:,;)\]>]*"
    r"|(?<![\w.])/(?:root|work|tmp|home|usr|opt|var|srv|mnt|etc|proc|check)(?:/[^\s'\"`:,;)\]>]*)*"
)
WIDGET = "application/vnd.jupyter.widget-view+json"


def scrub(text: str) -> str:
    """Text with every absolute path of the grading machine replaced by <path>."""
    return _PATH.sub("<path>", text)


def test_results(nb: NotebookNode) -> list[dict]:
    """[{grade_id, points, max, passed, message}] for the graded test cells of an executed notebook."""
    from nbgrader.utils import determine_grade

    out = []
    for cell in nb.cells:
        if not is_test_cell(cell):
            continue
        score, top = determine_grade(cell)
        info = cell.metadata.get("labkit", {})
        message = ""
        if info.get("failed") == "hidden":
            title = (info.get("message", "").split(": ", 1)[-1].split(":", 1)[0] or "a check").strip()
            message = f"a hidden test failed ({scrub(title[:60])}); hidden tests' cases are not shown"
        elif info.get("failed"):
            message = scrub(info.get("message", ""))
        out.append(dict(grade_id=cell.metadata["nbgrader"]["grade_id"], points=float(score or 0),
                        max=float(top), passed=not info.get("failed") and score == top,
                        message=message))  # fmt: skip
    return out


def _output_html(o: NotebookNode) -> str:
    esc = lambda t: html.escape(scrub(t if isinstance(t, str) else "".join(t)))  # noqa: E731
    if o.output_type == "stream":
        return f"<pre class='out'>{esc(o.text)}</pre>"
    if o.output_type == "error":
        return f"<pre class='err'>{esc(o.ename + ': ' + o.evalue)}</pre>"
    data = o.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            return f"<img src='data:{mime};base64,{''.join(data[mime]).strip()}'>"
    text = data.get("text/plain", "")
    if WIDGET in data:
        return f"<pre class='out'>[interactive widget, shown as text] {esc(text)}</pre>"
    return f"<pre class='out'>{esc(text)}</pre>" if text else ""


def _markdown_html(source: str) -> str:
    try:
        from nbconvert.filters.markdown import markdown2html

        rendered = markdown2html(scrub(source))
    except Exception:
        return f"<pre>{html.escape(scrub(source))}</pre>"
    # raw HTML from a student's markdown cell is not trusted: drop script and style elements
    return re.sub(r"<(script|style|iframe)\b.*?</\1\s*>", "", rendered, flags=re.S | re.I)


def render(nb: NotebookNode, student: str, notebook: str) -> str:
    """The feedback page of one executed notebook."""
    results = test_results(nb)
    got, top = sum(r["points"] for r in results), sum(r["max"] for r in results)
    rows = "".join(
        f"<tr class='{'pass' if r['passed'] else 'fail'}'><td>{html.escape(r['grade_id'])}</td>"
        f"<td>{r['points']:g} / {r['max']:g}</td><td>{'PASS' if r['passed'] else 'FAIL'}</td>"
        f"<td><pre>{html.escape(r['message'])}</pre></td></tr>"
        for r in results
    )
    body = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body.append(f"<div class='md'>{_markdown_html(cell.source)}</div>")
        elif cell.cell_type == "code":
            source = split_test(cell.source)[0] if is_test_cell(cell) else cell.source
            outs = "".join(_output_html(o) for o in cell.get("outputs", []))
            body.append(f"<div class='code'><pre class='src'>{html.escape(scrub(source))}</pre>{outs}</div>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto} pre{white-space:pre-wrap}"
             ".pass td{background:#e8f5e9}.fail td{background:#ffebee} table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}.src{background:#f5f5f5}"
             ".err{color:#b00}.code{margin:1em 0}")  # fmt: skip
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(notebook)}: feedback</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(notebook)}</h1>"
        f"<p>Student: {html.escape(student)}. Score: <b>{got:g} / {top:g}</b></p>"
        f"<table><tr><th>test</th><th>points</th><th>result</th><th>message</th></tr>{rows}</table>"
        f"<h2>Your notebook as graded</h2>{''.join(body)}</body></html>"
    )
