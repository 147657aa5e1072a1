"""`agentmem sessions list|show|export|delete`: the sessions in a store.

Nothing here loads a model: everything comes from the SQLite file (`--store`, default
./agentmem.db), which is never created just to be read: `list`, `show` and `export` open it
read-only (SQLite's mode=ro, so another program's database stays byte for byte as it was).
Text from the database is printed with control characters escaped (`common.escape`), so a
title cannot send escape sequences to the terminal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import DEFAULT_STORE, escape, megabytes, open_store, plot_problem, write_json

CONTENT_WIDTH = 72


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `sessions` and its subcommands."""
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument("--store", type=Path, default=DEFAULT_STORE, metavar="PATH",
                               help=f"session database (default: ./{DEFAULT_STORE})")
    sessions = sub.add_parser(
        "sessions", help="list, show, export or delete stored sessions",
        description="The sessions in a store (what `agentmem chat` and Session(store=Store(PATH)) write). "
                    "Reads the SQLite file only; no model is loaded.")
    verbs = sessions.add_subparsers(dest="verb", required=True, metavar="ACTION")

    listing = verbs.add_parser("list", parents=[store_options], help="one line per session, newest first",
                               description="Every session: id, title, model, turns, tokens (logical / physical KV "
                                           "slots at its last checkpoint), compactions, last update (UTC).")
    listing.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    listing.set_defaults(func=run_list)

    show = verbs.add_parser("show", parents=[store_options], help="messages, segments and compactions of one session",
                            description="One session: its messages, a summary of its segments (by kind, how many "
                                        "compacted or pinned), and a table of its compaction events.")
    show.add_argument("id", metavar="ID", help="session id (`agentmem sessions list`)")
    show.add_argument("--full", action="store_true", help="print whole messages, not one line each")
    show.add_argument("--plot", type=Path, default=None, metavar="PNG",
                      help="also write a plot of the KV size over the session to this PNG file")
    show.set_defaults(func=run_show)

    export = verbs.add_parser("export", parents=[store_options], help="one session as JSON",
                              description="The session's row, messages (with token ids), segments, compaction "
                                          "events and a summary of its KV checkpoint, as JSON.")
    export.add_argument("id", metavar="ID", help="session id")
    export.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    export.set_defaults(func=run_export)

    delete = verbs.add_parser("delete", parents=[store_options], help="delete one session",
                              description="Delete a session with its messages, events and KV checkpoints "
                                          "(blobs other sessions share stay). Asks first unless --yes.")
    delete.add_argument("id", metavar="ID", help="session id")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask")
    delete.set_defaults(func=run_delete)


def run_list(args: argparse.Namespace) -> int:
    """`agentmem sessions list`."""
    with open_store(args.store, must_exist=True, readonly=True) as store:
        rows = store.list_sessions()
    if args.json:
        write_json(None, rows, indent=None)
        return 0
    if not rows:
        print(f"no sessions in {args.store}")
        return 0
    table = [["ID", "TITLE", "MODEL", "TURNS", "TOKENS", "KV", "COMPACTIONS", "UPDATED"]]
    for r in rows:
        table.append([escape(r["id"]), _clip(escape(r["title"] or ""), 32), escape(r["model"]), str(r["turns"]),
                      _num(r["logical_tokens"]), _num(r["physical_tokens"]), str(r["compactions"]),
                      _when(r["updated_at"])])
    print(_table(table))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`agentmem sessions show ID`."""
    if args.plot is not None:
        plot_problem(args.plot)  # fails now, before printing, when matplotlib is missing
    with open_store(args.store, must_exist=True, readonly=True) as store:
        data = store.export_session(args.id)
    session, messages, events = data["session"], data["messages"], data["events"]
    checkpoint = data["checkpoint"]
    print(f"session {escape(session['id'])}" + (f"  {session['title']!r}" if session.get("title") else ""))
    print(f"model {escape(session['model'])}, {session['turns']} turns, created {_when(session['created_at'])}, "
          f"updated {_when(session['updated_at'])} (UTC)")
    if checkpoint:
        print(f"KV: {checkpoint['logical_tokens']} logical tokens in {checkpoint['physical_tokens']} physical "
              f"slots, {megabytes(checkpoint['bytes'])} (checkpoint of turn {checkpoint['turn']})")
    else:
        print("KV: no checkpoint (a resume prefills the messages again)")

    print(f"\nmessages ({len(messages)}):")
    table = [["#", "TURN", "ROLE", "TOKENS", "CONTENT"]]
    for m in messages:
        content = (escape(m["content"], newlines=True) if args.full
                   else _clip(escape(" ".join(m["content"].split())), CONTENT_WIDTH))
        table.append([str(m["index"]), str(m.get("turn", "")), escape(m["role"]), str(len(m["token_ids"])), content])
    print(_table(table))

    segments = data["segments"]
    print(f"\nsegments ({len(segments)}):")
    print(_table(_segment_summary(segments)))

    print(f"\ncompactions ({len(events)}):")
    if events:
        table = [["TURN", "TRIGGER", "METHOD", "RATIO", "SPAN", "TOKENS", "MB", "SECONDS", "STATUS"]]
        for e in events:
            status = e["status"] + (f" ({e['error']})" if e.get("error") else "")
            table.append([str(e["turn"]), escape(e["trigger"] or ""), escape(e["method"] or ""),
                          f"{e['ratio'] or 0:.3g}", f"{e['start']}-{e['end']}",
                          f"{e['tokens_before']} -> {e['tokens_after']}",
                          f"{(e['bytes_before'] or 0) / 2**20:.1f} -> {(e['bytes_after'] or 0) / 2**20:.1f}",
                          f"{e['seconds'] or 0:.2f}", escape(" ".join(status.split()))])
        print(_table(table))
    else:
        print("  none")
    if args.plot is not None:
        plot_kv(messages, events, args.plot, title=f"session {escape(session['id'][:12])} ({escape(session['model'])})")
        print(f"\nplot: {args.plot}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """`agentmem sessions export ID`."""
    with open_store(args.store, must_exist=True, readonly=True) as store:
        data = store.export_session(args.id)
    write_json(args.out, data)
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """`agentmem sessions delete ID`: 1 if the user said no."""
    with open_store(args.store, must_exist=True) as store:
        row = store.get_session(args.id)  # an unknown id fails before asking
        if not args.yes:
            title = f" {row['title']!r}" if row.get("title") else ""
            try:
                answer = input(f"delete session {args.id}{title} ({row['turns']} turns) from {args.store}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not deleted")
                return 1
        store.delete_session(args.id)
    print(f"deleted session {args.id}")
    return 0


# ----------------------------------------------------------------------------- KV over time


def kv_series(messages: list[dict], events: list[dict]) -> tuple[list[int], list[int]]:
    """Logical and physical KV tokens along the session, from stored messages and events.

    The logical size grows by each message's tokens; every compaction (or drop) takes
    `tokens_before - tokens_after` physical slots off at the logical length where it
    happened. Returns the x values (logical tokens) and the physical sizes there.
    """
    marks: list[tuple[int, int, int]] = []  # (logical, order, slots freed): events before messages ending there
    logical = 0
    for m in messages:
        logical += len(m["token_ids"])
        marks.append((logical, 1, 0))
    for e in events:
        if e["status"] in ("ok", "fallback") and e["tokens_before"] is not None and e["tokens_after"] is not None:
            marks.append((int(e["logical_tokens"] or 0), 0, int(e["tokens_before"]) - int(e["tokens_after"])))
    points = [(0, 0)]
    freed = 0
    for at, _, saved in sorted(marks):
        if saved:
            points.append((at, at - freed))
            freed += saved
        points.append((at, at - freed))
    points = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    return [x for x, _ in points], [y for _, y in points]


def plot_kv(messages: list[dict], events: list[dict], path: Path, *, title: str) -> None:
    """Write a PNG of logical vs physical KV tokens over the session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = kv_series(messages, events)
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ax.plot(xs, xs, color="0.6", linestyle="--", label="logical (no compaction)")
        ax.plot(xs, ys, color="C0", label="physical KV slots")
        for e in events:
            if e["status"] in ("ok", "fallback"):
                ax.axvline(e["logical_tokens"] or 0, color="C3", alpha=0.25, linewidth=1)
        ax.set_xlabel("conversation tokens (logical)")
        ax.set_ylabel("KV tokens")
        ax.set_title(f"{title}: {sum(e['status'] in ('ok', 'fallback') for e in events)} compactions")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- formatting


def _segment_summary(segments: list[dict]) -> list[list[str]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for s in segments:
        row = by_kind.setdefault(s["kind"], {"count": 0, "tokens": 0, "compacted": 0, "pinned": 0})
        row["count"] += 1
        row["tokens"] += s["end"] - s["start"]
        row["compacted"] += bool(s["compactions"])
        row["pinned"] += bool(s["pinned"])
    table = [["KIND", "SEGMENTS", "TOKENS", "COMPACTED", "PINNED"]]
    for kind, row in by_kind.items():
        table.append([escape(kind), str(row["count"]), str(row["tokens"]), str(row["compacted"]), str(row["pinned"])])
    return table


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _when(iso: str | None) -> str:
    """An ISO-UTC time as 'YYYY-MM-DD HH:MM:SS'."""
    return "-" if not iso else iso.replace("T", " ")[:19]
