"""HTML fragments that repeat thousands of times on a large site (table cells and rows, label/value
tables, SVG charts), written in Python because Jinja macros cost ~10x more per call.

Every stored or user-controlled value passes through `esc` (html.escape with quotes), and each
function returns `Markup` so templates insert it as is. Templates keep the page structure.
"""

from __future__ import annotations

from html import escape
from typing import Any

from markupsafe import Markup

from medpeft_cli.report.boards import cell_title
from medpeft_cli.report.formatting import DASH, decimals, filter_value, fmt, pvalue, sort_value, span
from medpeft_cli.report.runpage import run_href


def esc(x: Any) -> str:
    return escape(str(x), quote=True)


_PLAIN = (int, float, type(None))


def _value(x: Any, kind: str) -> str:
    """`fmt(x, kind)`, escaped unless x is a number or None (their text is digits, units and signs only)."""
    text = fmt(x, kind)
    return text if type(x) in _PLAIN else escape(text, quote=True)


def estimate_cell(cell: Any, metric: Any, best: bool = False, rank: float | None = None, dataset: Any = ..., root: str = "", published: Any = None) -> str:
    """A <td> with mean ± CI half-width and n; `dataset` (when given) makes it a filterable column cell.
    A cell of a single run links to that run's page (`root`: the page's path to the site root).
    `published`: published rows for this cell (report/published.py), shown under the measured value,
    labelled with their source; they change nothing else of the cell (its sort value stays the mean)."""
    stat = cell.stats.get(metric.name) if cell is not None else None
    attrs = ' class="num best"' if best else ' class="num"'
    if dataset is not ...:
        attrs += f' data-filtered data-f-dataset="{esc(filter_value(dataset))}"'
    tip = cell_title(cell, metric)
    if rank is not None:
        tip += f"; rank {rank:g}"
    if stat is None or stat.mean is None:
        return f'<td{attrs} data-v="" title="{esc(tip)}">{DASH}</td>'
    places = metric.decimals
    text = decimals(stat.mean, places)
    href = run_href(cell.runs[0].key) if cell.n == 1 else None
    if href:
        text = f'<a href="{esc(root)}{href}">{text}</a>'  # run_href only returns safe file names
    if stat.half_width is not None:
        text += f'<span class="ci"> ± {decimals(stat.half_width, places)}</span>'
    text += f'<span class="n">{stat.n}</span>'
    if cell.n_settings > 1:
        text += f'<span class="setting" title="{esc(cell.setting_note)}">⚙</span>'
    for ref in published or ():
        text += _published_mark(ref)
    return f'<td{attrs} data-v="{sort_value(stat.mean)}" title="{esc(tip)}">{text}</td>'


def _published_mark(ref: Any) -> str:
    """A published value under a measured one: its source visible, the details on hover."""
    pm = f" ± {ref['plus_minus']}" if ref.get("plus_minus") else ""
    tip = f"published in {ref['source']}, {ref['ref_table']}: {ref['value_text']}{pm} as printed; not part of any mean, rank or test"
    return f'<span class="published" title="{esc(tip)}">{esc(ref["source"])}: {esc(ref["value_text"])}</span>'


def _vs_control_cell(row: Any, metric: Any, control: str, has_control: bool) -> str:
    vs = row.vs_control
    if vs is None:
        text = "control" if row.method == control else ("no full runs" if not has_control else DASH)
        return f'<td class="text sig" data-v="">{esc(text)}</td>'
    median = vs.test.median_diff
    median_text = decimals(median, metric.decimals + 1) if median is not None else DASH
    tip = f"Wilcoxon signed-rank, {vs.test.n} pairs; median difference {median_text}; {pvalue(vs.test.p)}, Holm {pvalue(vs.p_holm)}"
    verdict = vs.verdict
    text = {"better": f"▲ {pvalue(vs.p_holm)}", "worse": f"▼ {pvalue(vs.p_holm)}", "n.s.": "n.s."}.get(verdict, "too few pairs")
    css = verdict.replace(".", "").replace(" ", "-")
    return f'<td class="text sig {css}" data-v="{sort_value(median)}" title="{esc(tip)}">{esc(text)}</td>'


def overview_row(row: Any, view: Any, control: str, has_control: bool, method_href: str, published: Any = None) -> Markup:
    """One method's row of an overview table view; `published`: {(method, dataset): published rows} of the view."""
    metric, board = view.metric, view.board
    incomplete = "" if row.complete else f' <span class="incomplete" title="results on {row.n_datasets} of {view.n_datasets} datasets">†</span>'
    trainable, pct = row.trainable, row.trainable_pct
    parts = [
        f'<tr data-filtered data-f-family="{esc(filter_value(row.kind))}">',
        f'<th scope="row" class="text method"><a href="{esc(method_href)}">{esc(fmt(row.method))}</a>{incomplete}</th>',
        f'<td class="text">{esc(row.kind)}</td>',
        f'<td class="num" data-v="{sort_value(trainable[1]) if trainable else ""}">{esc(span(trainable, "params"))}</td>',
        f'<td class="num" data-v="{sort_value(pct[1]) if pct else ""}">{esc(span(pct, "percent"))}</td>',
    ]
    for j, cell in enumerate(row.cells):
        marks = published.get((row.method, board.datasets[j])) if published else None
        parts.append(estimate_cell(cell, metric, row.best[j], row.ranks[j], board.datasets[j], published=marks))
    parts.append(f'<td class="num" data-v="{sort_value(row.avg)}">{decimals(row.avg, metric.decimals)}</td>')
    parts.append(f'<td class="num" data-v="{sort_value(row.avg_rank)}">{decimals(row.avg_rank, 2)}</td>')
    parts.append(_vs_control_cell(row, metric, control, has_control))
    parts.append("</tr>")
    return Markup("".join(parts))


def fields(items: list[dict[str, Any]]) -> Markup:
    """A label/value table of `{"label", "value", "kind"}` items."""
    body = "".join(f'<tr><th scope="row">{esc(i["label"])}</th><td>{_value(i["value"], i["kind"])}</td></tr>' for i in items)
    return Markup(f'<table class="fields"><tbody>{body}</tbody></table>')


def key_values(items: list[tuple[Any, Any]]) -> Markup:
    """A label/value table of raw (name, value) pairs, e.g. one section of metrics_json."""
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{_value(v, "value")}</td></tr>' for k, v in items)
    return Markup(f'<table class="fields"><tbody>{body}</tbody></table>')


def per_class_table(per_class: list[dict[str, Any]]) -> Markup:
    body = "".join(
        f'<tr><td class="num">{c["index"]}</td><td class="text">{esc(c["name"])}</td><td class="num">{esc(fmt(c["f1"], "metric"))}</td></tr>'
        for c in per_class
    )
    head = '<thead><tr><th scope="col" class="num">#</th><th scope="col" class="text">Class</th><th scope="col" class="num">F1</th></tr></thead>'
    return Markup(f'<table class="data">{head}<tbody>{body}</tbody></table>')


def history_table(history: dict[str, Any]) -> Markup:
    head = "".join(f'<th scope="col" class="num">{esc(c)}</th>' for c in history["columns"])
    rows = "".join("<tr>" + "".join(f'<td class="num">{_value(v, "value")}</td>' for v in r) + "</tr>" for r in history["rows"])
    return Markup(f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def run_rows(runs: list[Any], metrics: list[Any], run_href: Any, method_href: Any, root: str) -> Markup:
    """The rows of a dataset page's table of all runs."""
    memo: dict[tuple, str] = {}

    def once(kind: str, x: Any, make: Any) -> str:
        # Most columns repeat a few values (backbones, methods, fractions, statuses) over thousands of rows.
        try:
            return memo[(kind, type(x), x)]
        except KeyError:
            text = memo[(kind, type(x), x)] = make(x)
            return text
        except TypeError:  # an unhashable stored value
            return make(x)

    def attr(x: Any) -> str:
        return once("attr", x, lambda v: esc(filter_value(v)))

    def shown(x: Any, kind: str = "value") -> str:
        return once(kind, x, lambda v: esc(fmt(v, kind)))

    out = []
    for r in runs:
        row = r.row
        key = r.key
        href = run_href(key)
        label = esc(str(key)[:12])
        if href:
            link = f'<a class="key" href="{root}{esc(href)}" title="{esc(key)}">{label}</a>'
        else:
            link = f'<span class="key" title="{esc(key)} (no page: unsafe run key)">{label}</span>'
        values = [r.metrics.get(m.name) for m in metrics]
        metric_cells = "".join(f'<td class="num" data-v="{sort_value(v)}">{decimals(v, m.decimals)}</td>' for v, m in zip(values, metrics))
        method, fraction, status, lr = r.method, r.fraction, row.get("status"), row.get("lr")
        out.append(
            f'<tr data-filtered data-f-backbone="{attr(row.get("backbone"))}" data-f-family="{attr(r.kind)}"'
            f' data-f-fraction="{attr(fraction)}" data-f-protocol="{attr(row.get("protocol_version"))}"'
            f' data-f-status="{attr(status)}">'
            f'<td class="text">{link}</td><td class="text">{shown(row.get("backbone"))}</td>'
            f'<td class="text"><a href="{root}{once("href", method, lambda m: esc(method_href(m)))}">{shown(method)}</a></td>'
            f'<td class="num" data-v="{once("sort", fraction, sort_value)}">{shown(fraction, "fraction")}</td>'
            f'<td class="num">{shown(r.seed)}</td><td class="text{"" if r.ok else " status"}">{shown(status)}</td>'
            f'{metric_cells}<td class="num" data-v="{sort_value(r.trainable)}">{shown(r.trainable, "params")}</td>'
            f'<td class="num" data-v="{once("sort", lr, sort_value)}">{shown(lr)}</td>'
            f'<td class="num">{shown(row.get("protocol_version"))}</td></tr>'
        )
    return Markup("\n".join(out))


# --- SVG --------------------------------------------------------------------------------------------


def _truncate(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def chart_svg(c: dict[str, Any], title: str, root: str = "") -> Markup:
    """A line or scatter chart from `charts.line_chart` / `charts.scatter_chart`."""
    f = c["frame"]
    x0, x1, y0, y1 = f["x0"], f["x1"], f["y0"], f["y1"]
    out = [
        f'<svg class="chart" viewBox="0 0 {c["w"]} {c["h"]}" width="{c["w"]}" height="{c["h"]}" role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{esc(title)}</title>",
        '<g class="grid">',
    ]
    out += [f'<line x1="{x0}" x2="{x1}" y1="{t["y"]}" y2="{t["y"]}"/>' for t in c["yticks"]]
    out += [f'<line x1="{t["x"]}" x2="{t["x"]}" y1="{y0}" y2="{y1}"/>' for t in c["xticks"]]
    out.append("</g>")
    out.append(f'<g class="axis"><line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/><line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/>')
    out += [f'<text x="{float(x0) - 6:g}" y="{t["y"]}" dy="0.32em" text-anchor="end">{esc(t["label"])}</text>' for t in c["yticks"]]
    out += [f'<text x="{t["x"]}" y="{float(y0) + 16:g}" text-anchor="middle">{esc(t["label"])}</text>' for t in c["xticks"]]
    out.append(f'<text class="label" x="{(float(x0) + float(x1)) / 2:g}" y="{c["h"] - 6}" text-anchor="middle">{esc(c["x_label"])}</text>')
    out.append(f'<text class="label" transform="translate(12 {(float(y0) + float(y1)) / 2:g}) rotate(-90)" text-anchor="middle">{esc(c["y_label"])}</text></g>')
    out += [f'<line class="mark" x1="{m["x"]}" x2="{m["x"]}" y1="{y0}" y2="{y1}"><title>{esc(m["label"])}</title></line>' for m in c["marks"]]
    if c.get("front"):
        out.append(f'<path class="front" d="{c["front"]}"><title>Pareto front: {esc(", ".join(c["front_names"]))}</title></path>')
    for s in c["series"]:
        out.append(f'<g class="series" stroke="{s["color"]}" fill="{s["color"]}">')
        if s["band"]:
            out.append(f'<path class="band" d="{s["band"]}"/>')
        if s["line"]:
            out.append(f'<path class="line" d="{s["line"]}"/>')
        if s["errbar"]:
            e = s["errbar"]
            out.append(f'<line class="errbar" x1="{e["x"]}" x2="{e["x"]}" y1="{e["y0"]}" y2="{e["y1"]}"/>')
        out += [f'<circle cx="{p["x"]}" cy="{p["y"]}" r="3.5"><title>{esc(p["tip"])}</title></circle>' for p in s["points"]]
        out.append("</g>")
    for item in c["legend"]:
        body = (
            f'<rect x="{item["x"]}" y="{float(item["y"]) - 5:g}" width="12" height="10" fill="{item["color"]}"/>'
            f'<text x="{float(item["x"]) + 17:g}" y="{item["y"]}" dy="0.32em">{esc(_truncate(item["name"], 22))}</text>'
        )
        if item["href"]:
            body = f'<a href="{esc(root)}{esc(item["href"])}">{body}</a>'
        out.append(f'<g class="legend">{body}</g>')
    out.append("</svg>")
    return Markup("\n".join(out))


def cd_svg(c: dict[str, Any], title: str) -> Markup:
    """A critical-difference diagram from `charts.cd_diagram`."""
    a, cd = c["axis"], c["cd"]
    out = [
        f'<svg class="chart cd" viewBox="0 0 {c["w"]} {c["h"]}" width="{c["w"]}" height="{c["h"]}" role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{esc(title)}</title>",
        f'<g class="cdbar"><line x1="{cd["x0"]}" x2="{cd["x1"]}" y1="{cd["y"]}" y2="{cd["y"]}"/>'
        f'<line x1="{cd["x0"]}" x2="{cd["x0"]}" y1="{cd["y"] - 4}" y2="{cd["y"] + 4}"/>'
        f'<line x1="{cd["x1"]}" x2="{cd["x1"]}" y1="{cd["y"] - 4}" y2="{cd["y"] + 4}"/>'
        f'<text x="{float(cd["x1"]) + 6:g}" y="{cd["y"]}" dy="0.32em">{esc(cd["label"])}</text></g>',
        f'<g class="axis"><line x1="{a["x0"]}" x2="{a["x1"]}" y1="{a["y"]}" y2="{a["y"]}"/>',
    ]
    out += [
        f'<line x1="{t["x"]}" x2="{t["x"]}" y1="{a["y"] - 5}" y2="{a["y"]}"/><text x="{t["x"]}" y="{a["y"] - 8}" text-anchor="middle">{esc(t["label"])}</text>'
        for t in c["ticks"]
    ]
    out.append("</g>")
    out += [
        f'<line class="clique" x1="{b["x0"]}" x2="{b["x1"]}" y1="{b["y"]}" y2="{b["y"]}"><title>not significantly different</title></line>'
        for b in c["bars"]
    ]
    for lab in c["labels"]:
        tx = float(lab["tx"]) + (-4 if lab["side"] == "left" else 4)
        out.append(
            f'<g class="method"><polyline points="{lab["x"]},{a["y"]} {lab["x"]},{lab["y"]} {lab["tx"]},{lab["y"]}"/>'
            f'<text x="{tx:g}" y="{lab["y"]}" dy="0.32em" text-anchor="{lab["anchor"]}">{esc(_truncate(lab["name"], 24))} ({esc(lab["rank"])})</text></g>'
        )
    out.append("</svg>")
    return Markup("\n".join(out))
