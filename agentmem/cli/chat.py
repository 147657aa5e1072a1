"""`agentmem chat`: talk to a model whose KV cache stays inside a policy's budget.

Every turn is committed to a SQLite store, so `--session ID` continues a conversation in
a new process from its saved KV cache (only the new message is prefilled). `--message`
answers one message and exits, `--json` prints it as one JSON object for scripts (usage in
LangChain's shape). Interactively, tokens stream as they are decoded, a short line marks
each compaction, and `/stats`, `/compact`, `/save`, `/quit` act on the session.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AgentmemError, ConfigError, StaleSessionError, StoreWriteError
from ..usage import Usage
from .common import (
    DEFAULT_MODEL,
    DEFAULT_STORE,
    Activity,
    bar,
    check_creatable,
    escape,
    load,
    megabytes,
    non_negative_float,
    open_store,
    positive_int,
    progress_enabled,
)

if TYPE_CHECKING:
    from ..engine import Reply, Session
    from ..memory import Plan
    from ..segments import CompactionEvent

HELP = """commands:
  /stats    KV size now (logical and physical tokens, bytes), turns, compactions
  /compact  compact now with the policy's plan
  /save     commit the session now (every turn, and a /compact when you leave, is committed anyway)
  /quit     leave (Ctrl-D too); `agentmem chat --session ID` continues later"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `chat`."""
    chat = sub.add_parser(
        "chat", help="chat with a model inside a fixed KV budget; sessions are stored and resumable",
        description="Chat with a model whose older turns are compacted with Attention Matching when the policy's "
                    "budget is reached. Every turn is committed to the store with its KV cache, so --session ID "
                    "continues the conversation later, in another process, without prefilling it again. "
                    "Interactive commands: /stats, /compact, /save, /quit (or Ctrl-D); Ctrl-C stops a reply.",
        epilog="examples:\n"
               "  agentmem chat\n"
               "  agentmem chat --message 'My name is Ada.' --json\n"
               "  agentmem chat --session ID --message 'What is my name?' --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.add_argument("--model", default=None,
                      help=f"built-in name, HF id or local path (default: the resumed session's model, "
                           f"else {DEFAULT_MODEL})")
    chat.add_argument("--policy", default=None,
                      help="compaction policy: a preset (default, quality, aggressive, off) or a TOML file "
                           "(default: a resumed session keeps the policy it was stored with, a new one gets "
                           "'default')")
    chat.add_argument("--system", default=None, metavar="TEXT", help="system prompt of a new session")
    chat.add_argument("--store", type=Path, default=DEFAULT_STORE, metavar="PATH",
                      help=f"session database (default: ./{DEFAULT_STORE})")
    chat.add_argument("--session", default=None, metavar="ID",
                      help="resume this stored session (`agentmem sessions list` shows the ids); "
                           "default: start a new one and print its id")
    chat.add_argument("--title", default=None, help="title of a new session (default: its first message)")
    chat.add_argument("--message", default=None, metavar="TEXT",
                      help="answer this one message and exit ('-' reads it from stdin)")
    chat.add_argument("--json", action="store_true",
                      help="with --message: print one JSON object (reply, session_id, usage, finish_reason, "
                           "compactions, kv)")
    chat.add_argument("--max-new-tokens", type=positive_int, default=256, help="longest reply (default 256)")
    chat.add_argument("--temperature", type=non_negative_float, default=0.0,
                      help="sampling temperature; 0 = greedy (default)")
    chat.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    chat.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`agentmem chat`.

    Everything that can fail fast does so before the slow model load: the arguments, the
    policy, and whether the store can be written. A new store file is created only after
    the model has loaded, so a failed load leaves nothing behind.
    """
    if args.json and args.message is None:
        raise ConfigError("--json needs --message TEXT (interactive chat prints text)")
    message = _read_message(args.message)
    for option, text in (("--system", args.system), ("--title", args.title)):
        if text is not None:
            _check_utf8(option, text)
    _check_policy(args.policy)
    store = None
    if args.session is not None or args.store.exists():
        store = open_store(args.store, must_exist=True)  # writable: probed now, not after a reply
    else:
        check_creatable(args.store)
    try:
        model_name = args.model
        if args.session is not None:
            model_name = model_name or store.get_session(args.session)["model"]
        model_name = model_name or DEFAULT_MODEL
        model, tokenizer = load(model_name)
        if store is None:
            store = open_store(args.store, must_exist=False)
        chat = _Chat(args, store, model_name, model, tokenizer)
        if message is not None:
            return chat.once(message)
        return chat.interact()
    finally:
        if store is not None:
            store.close()


def kv_summary(session: Session) -> dict[str, int]:
    """The session's KV cache now: logical tokens (what it stands for), physical tokens, bytes."""
    stats = session.stats()
    return {"logical_tokens": stats.logical_tokens, "physical_tokens": stats.physical_tokens, "bytes": stats.bytes}


def describe(event: CompactionEvent) -> str:
    """One line for a compaction event: tokens before -> after and seconds."""
    change = f"{event.tokens_before} -> {event.tokens_after} tokens"
    if event.status == "failed":
        return f"[compaction of tokens {event.start}-{event.end} failed ({event.error}); dropping instead]"
    if event.status == "fallback":
        return f"[dropped tokens {event.start}-{event.end}: {change} in {event.seconds:.1f}s]"
    if event.status == "over_budget":
        return f"[{event.error}]"
    return (f"[compacted {change} in {event.seconds:.1f}s ({event.method} x{event.ratio:.3g}, "
            f"{event.trigger})]")


class _Chat:
    """One `agentmem chat` run: the model, the store and a session (made on the first message)."""

    def __init__(self, args: argparse.Namespace, store, model_name: str, model, tokenizer):
        self.args, self.store, self.model_name = args, store, model_name
        self.model, self.tokenizer = model, tokenizer
        self.console = _Console()
        self.session: Session | None = None
        self.unsaved = False  # a /compact since the last commit
        if args.session is not None:
            if args.system is not None:
                self.console.note("note: --system is ignored when resuming; the session keeps its own")
            self.session = self._claim(None)

    def _claim(self, first_message: str | None) -> Session:
        """The stored session --session names (it must exist), else a new one titled after the first message."""
        from ..claim import claim
        from ..engine import Session

        def create(session_id: str | None, origin: str) -> Session:
            title = self.args.title or _title(first_message or "")
            return Session(self.model, self.tokenizer, store=self.store, system=self.args.system, title=title,
                           **options)

        options: dict[str, Any] = {"policy": self.args.policy, "seed": self.args.seed, "model_name": self.model_name}
        claimed = claim(self.model, self.tokenizer, store=self.store, session_id=self.args.session,
                        create=None if self.args.session is not None else create, **options)
        return self._watch(claimed.session)

    def _watch(self, session: Session) -> Session:
        display = _CompactionDisplay(self.console)
        session.on_before_compaction(display.before)
        session.on_after_compaction(display.after)
        return session

    def _reply(self, text: str, *, stream: bool, stopped: threading.Event | None = None) -> tuple[Session, Reply]:
        """Add the user's message and generate (streaming to stdout if asked); the turn is committed."""
        session = self.session
        if session is None:
            session = self.session = self._claim(text)
            self.console.note(f"session {session.id} in {self.store.path}")
        session.add("user", text)
        self.unsaved = False  # the turn's commit includes it
        with _PrefillBar(session):
            pieces = session.stream(self.args.max_new_tokens, temperature=self.args.temperature,
                                    stop_when=(lambda _: stopped.is_set()) if stopped is not None else None)
            try:
                for piece in pieces:
                    if stream:
                        self.console.write(piece)
            except StaleSessionError as exc:  # the turn's commit: another writer got there first
                self._save_elsewhere(session, exc)
            except StoreWriteError as exc:  # a full disk, a lock held too long: kept, saved later
                self.unsaved = True
                if not stream:
                    print(session.last_reply.text)
                raise StoreWriteError(f"{exc} (the reply above is kept in memory only)") from None
        for event in session.last_reply.compactions:
            if event.status == "over_budget":  # not a compaction, so the display hooks do not see it
                self.console.note(describe(event))
        return session, session.last_reply

    def _save_elsewhere(self, session: Session, exc: StaleSessionError) -> None:
        """Keep this conversation as a new session; the one another writer changed stays as it is."""
        old = session.id
        new = session.save_as_new(title=f"{_title(session.messages[0]['content'])} (copy)" if session.messages
                                  else None)
        self.console.note(f"note: {exc}. Nothing is lost: this conversation was saved as new session {new}; "
                          f"session {old} keeps what the other writer stored")

    def once(self, message: str) -> int:
        """Answer one message; print the reply (or the JSON object)."""
        session, reply = self._reply(message, stream=False)
        if self.args.json:
            print(json.dumps({"reply": reply.text, "session_id": session.id, "usage": Usage.of(reply).metadata(),
                              "finish_reason": reply.finish_reason,
                              "compactions": [e.to_dict() for e in reply.compactions],
                              "kv": kv_summary(session)}))
        else:
            print(reply.text)
            self.console.note(f"session {session.id} (continue with: {self._resume_command(session)})")
        return 0

    def interact(self) -> int:
        """Read messages until /quit or end of input; stream each reply."""
        note = self.console.note
        if self.session is not None:
            stats = self.session.stats()
            note(f"resumed session {self.session.id}: {len(self.session.messages)} messages, "
                 f"{stats.logical_tokens} tokens in {stats.physical_tokens} KV slots")
        policy = self.args.policy or ("as stored" if self.session is not None else "default")
        note(f"chatting with {self.model_name} (policy {policy}); /help for commands, Ctrl-D to quit")
        prompt = "> " if _is_terminal(sys.stdin) else ""  # no prompts in the output of a piped script
        _tolerate_bad_bytes(sys.stdin)
        while True:
            try:
                line = input(prompt)
            except (EOFError, KeyboardInterrupt):
                print()
                break
            except UnicodeDecodeError as exc:  # a stdin that cannot be told to keep going
                raise ConfigError(f"stdin is not valid UTF-8 text ({exc.reason}); the turns before it are saved")
            text = line.strip()
            if not text:
                continue
            try:
                _check_utf8("the line", text)
            except ConfigError as exc:
                note(f"error: {str(exc).removesuffix('; pass UTF-8 text')}; it was not sent (the chat goes on)")
                continue
            if text.startswith("/"):
                if self._command(text) is False:
                    break
                continue
            try:
                with _ctrl_c_stops() as stopped:
                    _, reply = self._reply(text, stream=True, stopped=stopped)
            except StoreWriteError as exc:
                self.console.end_line()
                note(f"error: {exc}; the chat goes on, and the next turn (or /save) saves it")
                continue
            self.console.end_line()
            if reply.finish_reason == "stopped":
                note("[stopped]")
            elif reply.finish_reason == "length":
                note(f"[cut at --max-new-tokens {self.args.max_new_tokens}]")
        if self.session is not None:
            if self.unsaved:
                try:
                    self.session.save()
                except StaleSessionError as exc:
                    self._save_elsewhere(self.session, exc)
            note(f"session {self.session.id} saved; continue with: {self._resume_command(self.session)}")
        return 0

    def _resume_command(self, session: Session) -> str:
        """The command that continues `session`: with --store unless the store is the default one."""
        command = f"agentmem chat --session {shlex.quote(session.id)}"
        if Path(self.args.store) != DEFAULT_STORE:
            command += f" --store {shlex.quote(str(self.args.store))}"
        return command

    def _command(self, text: str) -> bool:
        """Run a slash command; False means quit. Errors print one line and the chat goes on."""
        name = text.split()[0].lower()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name in ("/help", "/?"):
            print(HELP)
            return True
        if name not in ("/stats", "/compact", "/save"):
            self.console.note(f"unknown command {name}; /help lists them")
            return True
        session = self.session
        if session is None:
            self.console.note("nothing yet: say something first")
            return True
        try:
            if name == "/stats":
                print(_stats(session))
            elif name == "/compact":
                events = session.compact()  # the display hooks print each event
                self.unsaved = bool(events)
                if not events:
                    self.console.note("nothing to compact: every segment is pinned or recent")
            else:
                try:
                    session.save()
                except StaleSessionError as exc:
                    self._save_elsewhere(session, exc)
                self.unsaved = False
                self.console.note(f"saved session {session.id} to {self.store.path}")
        except AgentmemError as exc:
            self.console.note(f"error: {exc}")
        return True



class _Console:
    """Streams reply text to stdout and puts notes (stderr) on a line of their own."""

    def __init__(self) -> None:
        self.mid_line = False

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        if self.mid_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.mid_line = False

    def note(self, line: str) -> None:
        self.end_line()
        print(line, file=sys.stderr, flush=True)


class _CompactionDisplay:
    """Compaction hooks: a live 'compacting' line while it runs, then one line per event.

    From the second compaction on, the line estimates the time left from the seconds per
    token of the last one (compaction reports no progress of its own).
    """

    def __init__(self, console: _Console):
        self.console = console
        self.activity: Activity | None = None
        self.seconds_per_token: float | None = None

    def before(self, plan: Plan) -> None:
        self.console.end_line()
        expected = None if self.seconds_per_token is None else self.seconds_per_token * plan.tokens
        self.activity = Activity(f"compacting {plan.tokens} tokens ({plan.reason})", expected=expected).start()

    def after(self, event: CompactionEvent) -> None:
        if self.activity is not None:
            self.activity.stop()
            self.activity = None
        span = (event.end or 0) - (event.start or 0)
        if event.status == "ok" and event.seconds and span > 0:
            self.seconds_per_token = event.seconds / span
        self.console.note(describe(event))


class _PrefillBar:
    """A bar over a long prefill, advanced by the session's `on_prefill_progress` callback.

    Only drawn when more than one chunk is pending (the total comes from the session, which
    also counts the reply's opener).
    """

    def __init__(self, session: Session):
        from ..engine import PREFILL_CHUNK

        self.session = session
        self.threshold = PREFILL_CHUNK
        self.bar = self.handle = None

    def __enter__(self) -> _PrefillBar:
        if progress_enabled():
            self.handle = self.session.on_prefill_progress(self._advance)
        return self

    def _advance(self, done: int, total: int) -> None:
        if self.bar is None and done == 0 and total > self.threshold:
            self.bar = bar(total=total, desc="prefill", unit="tok", leave=False)
        if self.bar is not None:
            self.bar.update(max(0, min(done, self.bar.total) - self.bar.n))
            if self.bar.n >= self.bar.total:
                self.bar.close()
                self.bar = None

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def _ctrl_c_stops() -> Iterator[threading.Event]:
    """While inside, the first Ctrl-C sets the event (the reply ends cleanly); a second one interrupts."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        stopped.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, previous)


def _stats(session: Session) -> str:
    """What /stats prints."""
    stats = session.stats()
    done = [e for e in session.events if e.status in ("ok", "fallback")]
    context = f" of {stats.context_length}" if stats.context_length else ""
    return (f"KV: {stats.logical_tokens}{context} logical tokens in {stats.physical_tokens} physical slots, "
            f"{megabytes(stats.bytes)}\nturns: {stats.turns}, compactions: {len(done)}, "
            f"messages: {len(session.messages)}, session: {session.id}")


def _tolerate_bad_bytes(stream: Any) -> None:
    """Let a bad line of stdin arrive as surrogates (rejected one line at a time) instead of ending the chat."""
    try:
        stream.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):  # not a text file (a test's StringIO), or not reconfigurable
        pass


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_message(message: str | None) -> str | None:
    if message is None:
        return None
    if message == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"stdin is not valid UTF-8 text ({exc.reason}); pipe UTF-8 text to --message -") from None
        _check_utf8("stdin", text)
    else:
        text = _check_utf8("--message", message)
    if not text.strip():
        raise ConfigError("--message is empty; pass the text to answer (or '-' to read it from stdin)")
    return text


def _check_utf8(what: str, text: str) -> str:
    """`text` unless it holds bytes that were not UTF-8 (undecodable argv or stdin bytes arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        bad = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else escape(text[exc.start])
        raise ConfigError(f"{what} is not valid UTF-8 text ({bad} at character {exc.start}); pass UTF-8 "
                          f"text") from None
    return text


def _check_policy(policy: str) -> None:
    """Parse the policy now: a bad preset or TOML file fails before the slow model load."""
    from ..policies import policy_from

    policy_from(policy)


def _title(message: str, width: int = 60) -> str:
    line = " ".join(message.split())
    return line if len(line) <= width else line[: width - 3] + "..."
