# Experiment script (docs/LOG.md, "bf16 reference queries"): python docs/experiments/repeat_pass_dtype.py [TOKENS] [bf16|fp32]
# The repeat pass alone (SmolLM2, one thread, with normalisers), fp32 vs bf16 autocast, two rounds; a 2nd argument profiles one pass.
import sys, time, torch
torch.set_num_threads(1)
import agentmem
from agentmem import hf, queries
model, tok = agentmem.load_model("smollm2-135m")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
ids = torch.randint(100, 20000, (1, n))
from transformers import DynamicCache
cache = DynamicCache(config=model.config)
hf.enable(model)
with torch.no_grad():
    t = time.perf_counter(); model(ids, past_key_values=cache, use_cache=True); pre = time.perf_counter() - t
view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
layers = set(hf.full_attention_layers(model))
print(f"prefill {pre:.2f}s")
for dt in (None, torch.bfloat16, None, torch.bfloat16):
    t = time.perf_counter()
    queries.forward_pass(model, view.copy(), ids, layers=layers, chunk=queries.REPEAT_CHUNK, dtype=dt, normalisers=True)
    print(dt, f"repeat {time.perf_counter() - t:.2f}s = {(time.perf_counter() - t)/pre:.2f}x prefill", flush=True)
if len(sys.argv) > 2:
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        queries.forward_pass(model, view.copy(), ids, layers=layers, chunk=queries.REPEAT_CHUNK, normalisers=True, dtype=torch.bfloat16 if sys.argv[2] == "bf16" else None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
