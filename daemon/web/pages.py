"""The status page's HTML: rendered whole by the server, readable with scripts off.

Every name that comes from a card or a folder (datasets, paths, errors, labels) goes through
:func:`e` (``html.escape``). The one inline script only makes the page live: it listens to
``/events`` and swaps in the fragment the server rendered, so no markup is built in the
browser. The Content-Security-Policy allows that script and the style by their hashes, and
nothing else (no other script, no frame, no form to another site).
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Any
from urllib.parse import quote, urlencode

from daemon.status import duration, printable, size

STATUSES = ("waiting", "uploading", "uploaded", "duplicate", "failed", "skipped")
PAGE_SIZE = 200

CSS = """
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--busy:#0969da;--mute:#6e7781}
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:.5rem 1rem}
header{display:flex;flex-wrap:wrap;gap:.3rem 1rem;align-items:baseline}
h1{font-size:1.3rem;margin:.4rem 0}h1 a{color:inherit;text-decoration:none}
.summary,.note{color:var(--mute)}.flash{padding:.4rem .6rem;border-left:4px solid var(--busy)}
.ds{border:1px solid #8884;border-radius:6px;padding:.6rem .8rem;margin:.6rem 0}
.ds h2{font-size:1.05rem;margin:0;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:.2rem 1rem;align-items:center}
progress{width:100%;height:.8rem}
.state,.st{font-size:.8rem;padding:0 .4rem;border-radius:4px;background:#8882}
.st-uploaded,.st-duplicate,.state-processed{color:var(--ok)}
.st-failed,.state-failed,.error{color:var(--bad)}
.st-uploading,.state-processing{color:var(--busy)}.st-skipped,.st-waiting{color:var(--mute)}
form{display:inline}button{font:inherit;padding:.25rem .7rem;margin:.2rem 0;cursor:pointer}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.2rem .4rem;
border-bottom:1px solid #8883;vertical-align:top}td.path{word-break:break-all}
nav a{margin-right:.8rem}nav a.on{font-weight:bold}
@media (max-width:40rem){td.size,th.size,td.att,th.att{display:none}}
"""

SCRIPT = """
(function(){
  var live=document.getElementById('live'),note=document.getElementById('conn');
  if(!live||!window.EventSource)return;
  var src=new EventSource('/events?view='+encodeURIComponent(location.pathname+location.search));
  src.onmessage=function(ev){live.innerHTML=ev.data;note.textContent='';};
  src.onerror=function(){note.textContent='connection lost; trying again';};
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; style-src {_csp_hash(CSS)}; script-src {_csp_hash(SCRIPT)};"
    " connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'"
)


def e(value: object) -> str:
    """Text from a card or the journal, safe inside HTML (and its control characters shown)."""
    return html.escape(printable(str(value)), quote=True)


def dataset_url(name: str, **query: object) -> str:
    """The page of a dataset (names may hold any character)."""
    url = "/datasets/" + quote(name, safe="")
    wanted = {k: str(v) for k, v in query.items() if v not in (None, "", 1)}
    return url + ("?" + urlencode(wanted) if wanted else "")


def layout(title: str, body: str, *, live: bool = True) -> str:
    """A whole page around ``body`` (the live part of it sits in ``<div id=live>``)."""
    script = f"<script>{SCRIPT}</script>" if live else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        '<header><h1><a href="/">dronesync</a></h1><span id=conn class=note></span></header>'
        f"{body}{script}</body></html>"
    )


def _button(action: str, label: str, csrf: str, back: str) -> str:
    return (
        f'<form method=post action="{e(action)}"><input type=hidden name=csrf value="{e(csrf)}">'
        f'<input type=hidden name=next value="{e(back)}"><button>{e(label)}</button></form>'
    )


def _settled(files: dict[str, int]) -> int:
    return files["uploaded"] + files["duplicate"] + files.get("skipped", 0)


def _counts(files: dict[str, int], name: str | None = None) -> str:
    """The non-zero file counts in the uploader's words, each a filter link when named."""
    parts = []
    for status in STATUSES:
        count = files.get(status, 0)
        if not count:
            continue
        label = f"{count} {status}"
        if name is not None:
            label = f'<a href="{e(dataset_url(name, status=status))}">{label}</a>'
        parts.append(f"<span class='st st-{status}'>{label}</span>")
    return " ".join(parts) or "<span class=note>no files yet</span>"


def dataset_block(ds: dict[str, Any], csrf: str, back: str, *, link: bool = True) -> str:
    """One dataset: state, progress, bytes, rate, ETA, its troubles and its buttons."""
    files = ds["files"]
    total = sum(files.values())
    name = ds["name"]
    title = f'<a href="{e(dataset_url(name))}">{e(name)}</a>' if link else e(name)
    rate = ""
    if ds["rate_bps"] and ds["state"] not in ("cancelled", "paused"):
        rate = f"<span>{size(ds['rate_bps'])}/s</span><span>ETA {duration(ds['eta_s'])}</span>"
    lines = [
        f'<article class=ds data-name="{e(name)}"><div class=row><h2>{title}</h2>'
        f"<span class='state state-{e(ds['state'])}'>{e(ds['state'])}</span>"
        f"<span class=note>to {e(ds['target'])}</span></div>",
        f"<progress max={max(total, 1)} value={_settled(files) if total else 0}></progress>",
        f"<div class=row><span>{_settled(files)} of {total} files</span>"
        f"<span>{size(ds['bytes_uploaded'])} of {size(ds['bytes_total'])}</span>{rate}</div>",
        f"<div class=row>{_counts(files, name)}</div>",
    ]
    if ds.get("files_hashing"):
        lines.append(f"<div class=note>{ds['files_hashing']} being read and hashed</div>")
    if ds["detail"]:
        lines.append(f"<div class=note>{e(ds['detail'])}</div>")
    if ds.get("files_retrying") and ds["state"] in ("collecting", "ready"):
        lines.append(
            f"<div class=error>{ds['files_retrying']} retrying: {e(ds['last_error'])}</div>"
        )
    if files["failed"] and ds.get("failed_error"):
        lines.append(f"<div class=error>{files['failed']} failed: {e(ds['failed_error'])}</div>")
    lines.append(f"<div class=row>{_actions(ds, csrf, back)}</div></article>")
    return "".join(lines)


def _actions(ds: dict[str, Any], csrf: str, back: str) -> str:
    base = dataset_url(ds["name"]).replace("/datasets/", "/api/datasets/", 1)
    state = ds["state"]
    buttons = []
    if ds["files"]["failed"] or state == "cancelled":
        buttons.append(_button(f"{base}/retry", "Retry", csrf, back))
    if state in ("collecting", "ready", "failed", "paused"):
        buttons.append(_button(f"{base}/process", "Process now", csrf, back))
    if state in ("collecting", "ready", "paused", "failed"):
        buttons.append(_button(f"{base}/cancel", "Cancel", csrf, back))
    return "".join(buttons)


def _summary(doc: dict[str, Any]) -> str:
    datasets = doc["datasets"]
    files = [ds["files"] for ds in datasets]
    total = sum(sum(f.values()) for f in files)
    done = sum(_settled(f) for f in files)
    failed = sum(f["failed"] for f in files)
    active = sum(1 for ds in datasets if ds["state"] in ("collecting", "ready", "processing"))
    rate = sum(ds["rate_bps"] for ds in datasets)
    left = sum(ds["bytes_total"] - ds["bytes_uploaded"] for ds in datasets)
    # The document holds the current datasets; the summary counts the history left out too.
    every = (doc.get("summary") or {}).get("datasets_total", len(datasets))
    parts = [f"{active} active of {every} datasets", f"{done} of {total} files"]
    if total:
        parts.append(f"{100 * done // total}%")
    if rate:
        parts.append(f"{size(rate)}/s, ETA {duration(left / rate)}")
    if failed:
        parts.append(f"<span class=error>{failed} failed</span>")
    return " · ".join(parts)


def index_fragment(doc: dict[str, Any], csrf: str, flash: str | None = None) -> str:
    """The live part of ``/``: summary, cards, retry all, one block per dataset, newest first."""
    out = []
    if not doc["daemon"]["running"]:
        out.append("<p class=flash>The daemon is not running: figures are from the journal.</p>")
    if flash:
        out.append(f"<p class=flash>{e(flash)}</p>")
    out.append(f"<p class=summary>{_summary(doc)}</p>")
    for card in doc.get("cards", []):
        if card["removable"]:
            what = "<b>can be removed</b>"
        elif card["files_left"] >= 0:
            what = f"keep it in: {card['files_left']} image(s) still to read"
        else:
            what = "keep it in: being scanned"
        out.append(f"<p>Card {e(card['label'])} ({e(card['path'])}): {what}</p>")
    spool = doc.get("spool")
    if spool and spool.get("full"):
        out.append(f"<p class=error>{e(spool['full'])}</p>")
    if any(ds["files"]["failed"] for ds in doc["datasets"]):
        out.append(_button("/api/retry", "Retry all failed files", csrf, "/"))
    if not doc["datasets"]:
        out.append("<p>No datasets yet: drop a folder of images into a watched source.</p>")
    out.extend(dataset_block(ds, csrf, "/") for ds in reversed(doc["datasets"]))
    return "".join(out)


def dataset_fragment(
    ds: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    status: str | None,
    page: int,
    csrf: str,
    flash: str | None = None,
) -> str:
    """The live part of a dataset's page: its block, status filters, one page of files."""
    name = ds["name"]
    back = dataset_url(name, status=status, page=page)
    shown = ds["files"].get(status, 0) if status else sum(ds["files"].values())
    pages = max(1, -(-shown // PAGE_SIZE))
    out = [f"<p class=flash>{e(flash)}</p>"] if flash else []
    out.append(dataset_block(ds, csrf, back, link=False))
    tabs = [f'<a href="{e(dataset_url(name))}"{" class=on" if not status else ""}>all</a>']
    for option in STATUSES:
        on = " class=on" if option == status else ""
        count = ds["files"].get(option, 0)
        tabs.append(f'<a href="{e(dataset_url(name, status=option))}"{on}>{option} ({count})</a>')
    out.append(f"<nav>{''.join(tabs)}</nav>")
    out.append(
        "<table><thead><tr><th>file</th><th>status</th><th class=size>size</th>"
        "<th class=att>attempts</th><th>note</th></tr></thead><tbody>"
    )
    for row in rows:
        note = ""
        if row["status"] == "duplicate" and row["duplicate_of"]:
            note = f"same as {e(row['duplicate_of'])}"
        elif row["last_error"]:
            note = f"<span class=error>{e(row['last_error'])}</span>"
        out.append(
            f"<tr><td class=path>{e(row['path'])}</td>"
            f"<td><span class='st st-{e(row['status'])}'>{e(row['status'])}</span></td>"
            f"<td class=size>{size(row['size'])}</td><td class=att>{row['attempts']}</td>"
            f"<td>{note}</td></tr>"
        )
    out.append("</tbody></table>")
    if not rows:
        out.append("<p class=note>No files here.</p>")
    links = []
    if page > 1:
        links.append(f'<a href="{e(dataset_url(name, status=status, page=page - 1))}">previous</a>')
    links.append(f"page {page} of {pages}")
    if page < pages:
        links.append(f'<a href="{e(dataset_url(name, status=status, page=page + 1))}">next</a>')
    out.append(f"<nav class=pages>{' '.join(links)}</nav>")
    return "".join(out)


def live_section(fragment: str) -> str:
    """The element the script refreshes."""
    return f"<div id=live>{fragment}</div>"


def login_page(message: str | None, back: str) -> str:
    """The password form (a page of its own: nothing else is shown before it)."""
    error = f"<p class=error>{e(message)}</p>" if message else ""
    body = (
        f"<p>This status page asks for its password.</p>{error}"
        '<form method=post action="/login">'
        f'<input type=hidden name=next value="{e(back)}">'
        "<label>Password <input type=password name=password autocomplete=current-password"
        " autofocus required></label> <button>Log in</button></form>"
    )
    return layout("dronesync: log in", body, live=False)


def not_found(what: str) -> str:
    """A page for a name that is not there."""
    body = f"<p>{e(what)}</p><p><a href='/'>All datasets</a></p>"
    return layout("dronesync: not found", body, live=False)
