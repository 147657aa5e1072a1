# Experiment script (docs/LOG.md, "one piece instead of 512-token pieces"): python docs/experiments/repeat_chunk_small.py
# SmolLM2 2k: the bf16 repeat pass in pieces of 512, 1024, 2048 tokens, over the prefill, two rounds.
import time, torch
torch.set_num_threads(2)
import agentmem
from agentmem import hf, queries
from transformers import DynamicCache
model, tok = agentmem.load_model("smollm2-135m")
ids = torch.randint(100, 20000, (1, 2048))
cache = DynamicCache(config=model.config); hf.enable(model)
with torch.no_grad():
    t = time.perf_counter(); model(ids, past_key_values=cache, use_cache=True); pre = time.perf_counter() - t
view = hf.CompactedCache.from_cache(cache, scalings=hf.attention_scalings(model))
layers = set(hf.full_attention_layers(model))
for r in range(2):
    for chunk in (512, 1024, 2048):
        t = time.perf_counter()
        queries.forward_pass(model, view.copy(), ids, layers=layers, chunk=chunk, dtype=torch.bfloat16, normalisers=True)
        print(f"chunk {chunk}: {(time.perf_counter() - t)/pre:.2f}x prefill", flush=True)
