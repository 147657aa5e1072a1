# Experiment script (see docs/LOG.md, "the demo fixes its bug"); run from the repository root:
#   python docs/experiments/probe_agent.py MODEL TASK_DIR "TASK TEXT" SEEDS [LIMIT] [MAX_TURNS] [TEMPERATURE]
#   e.g. python docs/experiments/probe_agent.py qwen2.5-coder-1.5b examples/coding_agent/tasks/shipping \
#        "The tests of this project fail. Find the bug in the code and fix it so that all tests pass." 0,1,2,3,4 1536 14 0.2
# The coding agent (build_agent, demo_policy: x4 am-fast) on a copy of one task folder, once per seed;
# prints each call, compaction and a RESULT line per seed. The harness is whatever the checkout has.
import sys
import tempfile
from pathlib import Path
from agentmem.agents import LocalModel, MemorySession
from agentmem.coding_agent.agent import READ_ONLY, DemoResult, build_agent, demo_policy, solve
from agentmem.coding_agent.workspace import Workspace
from agentmem.cli import common

model_name, task_dir, task = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
seeds = [int(s) for s in sys.argv[4].split(",")]
limit = int(sys.argv[5]) if len(sys.argv) > 5 else 2048
max_turns = int(sys.argv[6]) if len(sys.argv) > 6 else 20
temp = float(sys.argv[7]) if len(sys.argv) > 7 else 0.7
model, tok = common.load(model_name)
for seed in seeds:
    ws = Workspace.from_template(task_dir, Path(tempfile.mkdtemp()) / "ws", read_only=READ_ONLY)
    local = LocalModel.from_pretrained(model, tok, name=model_name, seed=seed)
    agent = build_agent(ws, model=local, policy=demo_policy(limit, 4.0, "am-fast"), temperature=temp)
    r = DemoResult(session_id="p", store="", workspace=str(ws.root))
    print(f"=== {model_name} seed {seed}", flush=True)
    solve(agent, ws, MemorySession(), task, max_turns=max_turns, result=r, console=sys.stdout)
    print(f"RESULT seed {seed}: pass={r.tests_pass} turns={r.turns} compactions={r.compactions} secs={r.seconds:.0f}", flush=True)
