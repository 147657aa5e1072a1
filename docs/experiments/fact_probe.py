# Experiment script (see docs/LOG.md, "a fact in a compacted span, outside the agent loop"); run from the repository root:
#   python docs/experiments/fact_probe.py MODEL METHOD:RATIO:SHAPE[,...]
#   e.g. python docs/experiments/fact_probe.py qwen2.5-coder-1.5b full:1:long,am:3:long,streaming:3:long
# The invoices task's files as chat messages: SHAPE short = config.ini alone, medium = README.md + config.ini,
# long = README.md + config.ini + the test file; then invoices.py (pinned). The messages before it are
# compacted by hand (RATIO "2x2": twice at x2), then the model is asked greedily for the corrected PREFIX
# line; "KX7 True" means the compacted config still answered.
import sys, time, torch
from pathlib import Path
from agentmem.cli import common
from agentmem.engine import Session
from agentmem.policies import Policy
T = Path(__file__).resolve().parents[2] / "examples/coding_agent/tasks/invoices"
name = sys.argv[1]; variants = sys.argv[2].split(",")
model, tok = common.load(name)
config, code = (T / "config.ini").read_text(), (T / "invoices.py").read_text()
test = (T / "test_invoices.py").read_text(); readme = (T / "README.md").read_text()
Q = "The tests say: an invoice number without the prefix in config.ini. What must the PREFIX line of invoices.py be? Answer with the corrected line only."
for v in variants:
    method, ratio, shape = v.split(":")
    s = Session(model, tok, policy=Policy.budget(100000, pins=["system"], protect_recent=0), system="You are a careful coding assistant.")
    if shape == "long":
        s.add("user", "README.md:\n" + readme)
        s.add("user", "config.ini:\n" + config)
        s.add("user", "test_invoices.py:\n" + test)
    elif shape == "medium":
        s.add("user", "README.md:\n" + readme)
        s.add("user", "config.ini:\n" + config)
    else:
        s.add("user", "config.ini:\n" + config)
    s.add("user", "invoices.py:\n" + code, pinned=True)
    s.prefill()
    before = s.stats().physical_tokens; t = time.perf_counter()
    if method != "full":
        for r_ in ratio.split("x"):
            s.compact(ratio=float(r_), method=method)
    secs = time.perf_counter() - t
    s.add("user", Q)
    r = s.generate(24, temperature=0.0)
    text = getattr(r, "text", r)
    print(f"{v:<22} {before}->{s.stats().physical_tokens} {secs:5.1f}s  KX7 {'KX7-' in text}  {text.strip()[:70]!r}", flush=True)
