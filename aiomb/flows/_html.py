"""HTML tables for notebooks: the ``_repr_html_`` of statistics snapshots and flow handles.

Layer: flows (the bottom layer; the core, the stack and the notebook shell use it). Every value
is escaped with :func:`html.escape`; nothing here imports a notebook package. Pure functions;
they never block.
"""

import html
from collections.abc import Mapping

import attrs


def text(value) -> str:
    """``str(value)`` escaped for HTML (enums print their names: ``ESTABLISHED``, ``fin``)."""
    return html.escape(str(value))


def cell(value) -> str:
    """One value as table-cell content: a nested table for an attrs snapshot (one row each for a
    tuple of snapshots of one class, e.g. a port's queues), ``reason: n`` pairs for a mapping
    (``none`` when empty), else the escaped text."""
    if attrs.has(type(value)):
        return fields_table(value)
    if isinstance(value, (tuple, list)) and value and all(type(v) is type(value[0]) for v in value) \
            and attrs.has(type(value[0])):
        names = [f.name for f in attrs.fields(type(value[0]))]
        return table([[cell(getattr(v, n)) for n in names] for v in value], header=names)
    if isinstance(value, Mapping):
        if not value:
            return "none"
        return ", ".join(f"{text(k)}: {text(v)}" for k, v in value.items())
    if value is None:
        return "&ndash;"
    return text(value)


def table(rows, *, header=None, title: str | None = None) -> str:
    """An HTML table of ``rows`` (sequences of already formatted cell HTML), with an optional
    ``header`` (plain strings, escaped here) and ``title`` (escaped; shown above the table)."""
    head = ""
    if header is not None:
        head = "<tr>" + "".join(f'<th style="text-align:left">{text(h)}</th>' for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f'<td style="text-align:left">{c}</td>' for c in row) + "</tr>"
                   for row in rows)
    caption = f"<p><b>{text(title)}</b></p>" if title is not None else ""
    return f"{caption}<table>{head}{body}</table>"


def fields_table(obj, *, title: str | None = None, extra=()) -> str:
    """An attrs snapshot as a two-column table (field, value), nested snapshots as nested tables;
    ``extra`` adds (name, value) rows after the fields (derived properties)."""
    rows = [(text(f.name), cell(getattr(obj, f.name))) for f in attrs.fields(type(obj))]
    rows += [(text(name), cell(value)) for name, value in extra]
    return table(rows, title=title)


def sides_table(client, server, *, title: str | None = None, extra=()) -> str:
    """Two :class:`~aiomb.SideStatistics` side by side (field, client, server); ``extra`` adds
    (name, value) rows spanning both columns (a flow's times and end reason)."""
    rows = [(text(f.name), cell(getattr(client, f.name)), cell(getattr(server, f.name)))
            for f in attrs.fields(type(client))]
    rows += [(text(name), f'<span title="both sides">{cell(value)}</span>', "") for name, value in extra]
    return table(rows, header=("", "client", "server"), title=title)


def flow_statistics_table(stats, *, title: str | None = None) -> str:
    """A :class:`~aiomb.FlowStatistics` as one table: both sides' counters, then the flow's times,
    end reason and mid-stream flag."""
    return sides_table(stats.client, stats.server, title=title, extra=(
        ("first_ts", f"{stats.first_ts:.6f}"), ("last_ts", f"{stats.last_ts:.6f}"),
        ("end_reason", stats.end_reason if stats.end_reason is not None else "open"),
        ("midstream", stats.midstream)))
