"""A child process for the resume tests: runs turns of a stored session on a tiny model.

Usage: python session_child.py DB SESSION_ID TURNS LOGITS_DIR [--resume]

Just before it commits turn N it writes `LOGITS_DIR/turn-N.pt` (the next-token logits the
session will continue with), and after the commit it prints `committed N`; tests kill it at
any moment, so every committed turn has its logits file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from agentmem.engine import Session  # noqa: E402
from agentmem.policies import AnyPin, FixedRatio, PinSystem, Policy, TokenLimit  # noqa: E402
from agentmem.store import Store  # noqa: E402

from conftest import tiny_chat_llama, tiny_tokenizer  # noqa: E402

POLICY = Policy(trigger=TokenLimit(120), ratio=FixedRatio(4), pin=AnyPin((PinSystem(),)), method="am-fast",
                protect_recent=16)


def main() -> None:
    db, session_id, turns, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    model, tokenizer = tiny_chat_llama(), tiny_tokenizer()
    store = Store(db)
    if "--resume" in sys.argv:
        session = Session.resume(store, session_id, model, tokenizer, policy=POLICY)
    else:
        session = Session(model, tokenizer, policy=POLICY, store=store, session_id=None, system="sys")
        Path(out / "id").write_text(session.id)
    start = session.turns
    for turn in range(start + 1, start + turns + 1):
        session.add("user", f"turn {turn}: tell me more")
        session.generate(24, save=False)
        # The logits file is written before the commit, so a kill can never leave a committed
        # turn without one (a fork computes them without touching what is committed).
        logits = session.fork().next_token_logits()
        scratch = out / f"turn-{session.turns}.pt.tmp"
        torch.save(logits, scratch)
        scratch.rename(out / f"turn-{session.turns}.pt")
        session.save()  # commits the turn
        print(f"committed {session.turns}", flush=True)


if __name__ == "__main__":
    main()
