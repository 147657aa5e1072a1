# Experiment script (docs/LOG.md, "where the demo's compaction goes"):
#   python docs/experiments/demo_phases.py MODEL [ROUNDS] [OPTION=VALUE ...]
# Phases of one am-fast x4 compaction of a demo-shaped span (five task files, ~1.2k tokens after a system
# prompt), bf16 reference queries, as seconds and as a share of the span's prefill. OPTION=VALUE pairs are
# passed to compact() (ints and floats parsed), e.g. max_queries=2048.
import sys, time, torch
from pathlib import Path
import agentmem
from agentmem.cli import common
from agentmem.engine import Session
from agentmem.policies import Policy

name = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
extra = {}
for pair in sys.argv[3:]:
    k, v = pair.split("=", 1)
    for cast in (int, float):
        try:
            v = cast(v); break
        except ValueError:
            pass
    extra[k] = v
model, tok = common.load(name)
T = Path(__file__).resolve().parents[2] / "examples/coding_agent/tasks"
texts = [(T / p).read_text() for p in ("shipping/shipping.py", "shipping/test_shipping.py", "invoices/invoices.py",
                                        "invoices/test_invoices.py", "replies/replies.py")]
for r in range(rounds):
    s = Session(model, tok, policy=Policy.budget(100000, pins=["system"], protect_recent=0),
                system="You are a careful coding assistant.")
    for t in texts:
        s.add("user", t)
    t0 = time.perf_counter(); s.prefill(); pre = time.perf_counter() - t0
    start, end = s.segments[1].start, len(s.ids)
    stats = {}
    opts = dict(tokenizer=tok, query_dtype="bfloat16", stats=stats); opts.update(extra)
    t0 = time.perf_counter()
    agentmem.compact(model, s.cache, torch.tensor([s.ids]), ratio=4, method="am-fast", start=start, end=end, **opts)
    secs = time.perf_counter() - t0
    phases = " ".join(f"{k} {v:.2f}s ({v / pre:.2f}x)" for k, v in stats["phases"].items())
    print(f"round {r}: span {end - start} tokens, prefill {pre:.2f}s, compaction {secs:.2f}s = {secs / pre:.2f}x; {phases}",
          flush=True)
