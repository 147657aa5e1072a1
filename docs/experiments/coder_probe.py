# Experiment script (see docs/LOG.md, "can the coder models do the tasks at all?"); run from the
# repository root:
#   python docs/experiments/coder_probe.py qwen2.5-coder-1.5b inventory pagination order_codes
# Hands a model each bundled task's buggy file and its failing test output in one prompt and
# asks for the line to change (greedy): can the model find the bug without the agent loop?
import json
import subprocess
import sys
import time

import agentmem
from agentmem.coding_agent import TASKS

model, tokenizer = agentmem.load_model(sys.argv[1])
listed = json.loads((TASKS / "tasks.json").read_text())
for name in sys.argv[2:]:
    fix = listed[name]["fix"]
    source = (TASKS / name / fix["path"]).read_text()
    failure = subprocess.run([sys.executable, "-m", "unittest", "-q"], cwd=TASKS / name, capture_output=True,
                             text=True).stderr[-900:]
    messages = [{"role": "system", "content": "You are a careful coding agent."},
                {"role": "user", "content": f"{fix['path']}:\n```python\n{source}```\n\nThe tests fail:\n```\n"
                                            f"{failure}\n```\nFix the bug in {fix['path']}. Answer with the line to "
                                            "replace and the new line."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    began = time.time()
    out = model.generate(**ids, max_new_tokens=150, do_sample=False)
    print(f"===== {name} ({time.time() - began:.0f} s); the reference fix: {fix['new']}")
    print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
