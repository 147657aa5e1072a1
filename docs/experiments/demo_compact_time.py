# Experiment script (docs/LOG.md, "bf16 reference queries"): python docs/experiments/demo_compact_time.py MODEL [ROUNDS]
# Compaction time of a demo-shaped span (five task files, ~1.2k tokens), fp32 reference queries vs bf16, interleaved rounds
import sys, time, torch
from pathlib import Path
from agentmem.cli import common
from agentmem.engine import Session
from agentmem.policies import Policy
name = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
model, tok = common.load(name)
T = Path(__file__).resolve().parents[2] / "examples/coding_agent/tasks"
texts = [(T / p).read_text() for p in ("shipping/shipping.py", "shipping/test_shipping.py", "invoices/invoices.py",
                                        "invoices/test_invoices.py", "replies/replies.py")]
for r in range(rounds):
    for qd in (None, "bfloat16"):
        s = Session(model, tok, policy=Policy.budget(100000, pins=["system"], protect_recent=0),
                    system="You are a careful coding assistant.", compaction_options={"query_dtype": qd or "float32"})
        for t in texts:
            s.add("user", t)
        t0 = time.perf_counter(); s.prefill(); pre = time.perf_counter() - t0
        n = s.stats().physical_tokens
        ev = s.compact(ratio=4, method="am-fast")
        secs = sum(e.seconds for e in ev)
        print(f"round {r} query_dtype {qd}: {n} tokens, prefill {pre:.1f}s, am-fast x4 {secs:.1f}s = {secs/pre:.2f}x prefill -> {s.stats().physical_tokens}", flush=True)
