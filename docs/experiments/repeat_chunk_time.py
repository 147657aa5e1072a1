# Experiment script (docs/LOG.md, "one piece instead of 512-token pieces"): python docs/experiments/repeat_chunk_time.py
# am-fast x4 on a demo-shaped span on the 1.5B (Session default: bf16 queries), repeat pass in 512-token pieces vs one piece.
import sys, time
from pathlib import Path
from agentmem.cli import common
from agentmem.engine import Session
from agentmem.policies import Policy
from agentmem import queries
model, tok = common.load("qwen2.5-coder-1.5b")
T = Path(__file__).resolve().parents[2] / "examples/coding_agent/tasks"
texts = [(T / p).read_text() for p in ("shipping/shipping.py", "shipping/test_shipping.py", "invoices/invoices.py",
                                        "invoices/test_invoices.py", "replies/replies.py")]
for r in range(2):
    for chunk in (512, 4096):
        queries.REPEAT_CHUNK = chunk
        s = Session(model, tok, policy=Policy.budget(100000, pins=["system"], protect_recent=0), system="You are a careful coding assistant.")
        for t in texts: s.add("user", t)
        t0 = time.perf_counter(); s.prefill(); pre = time.perf_counter() - t0
        ev = s.compact(ratio=4, method="am-fast")
        secs = sum(e.seconds for e in ev)
        print(f"round {r} chunk {chunk}: prefill {pre:.1f}s, am-fast x4 {secs:.1f}s = {secs/pre:.2f}x", flush=True)
