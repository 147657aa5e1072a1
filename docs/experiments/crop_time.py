# Experiment script (docs/LOG.md, review of 2026-12-01): python docs/experiments/crop_time.py
# Seconds of hf.crop_cache on a random cache shaped like SmolLM2's at 8k tokens (30 layers, 3 KV heads, fp32).
import time, torch, sys
from transformers import LlamaConfig, LlamaForCausalLM, DynamicCache
from agentmem import hf
cfg = LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=64, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64)
m = LlamaForCausalLM(cfg)
cache = DynamicCache(config=cfg)
for i in range(30):
    cache.update(torch.randn(1, 3, 8192, 64), torch.randn(1, 3, 8192, 64), i)
view = hf.CompactedCache.from_cache(cache, scalings={i: 0.125 for i in range(30)})
for r in range(3):
    t = time.perf_counter(); hf.crop_cache(view, 6144, m); print(f"crop of an 8k SmolLM2-shaped cache at 6144: {time.perf_counter() - t:.3f}s")
