# Experiment script (see docs/decode.md, "Heads at different widths"); run from the repository root:
#   OMP_NUM_THREADS=1 python docs/experiments/ragged_attention.py [SLOTS] [BORROWED]
# One decode step's attention for one layer of SmolLM2's shapes (9 query heads over 3 KV
# heads, D = 64): the library's folded single call (beta as SDPA's mask), and the ragged
# path (`hf.ragged.attend`: that call plus a small one over each owner's BORROWED slots,
# merged by log-sum-exp), plus the per-step gather of the borrowed slots. Medians of 7
# rounds of 300 calls, microseconds.
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from agentmem.hf import Borrowed, ragged

torch.manual_seed(0)
slots = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
lent = int(sys.argv[2]) if len(sys.argv) > 2 else 40
query = torch.randn(1, 9, 1, 64)
keys, values, bias = torch.randn(1, 3, slots, 64), torch.randn(1, 3, slots, 64), torch.randn(1, 3, slots)
records = Borrowed(torch.randint(0, 3, (1, 3, lent), dtype=torch.int32),
                   torch.randint(0, slots, (1, 3, lent), dtype=torch.int32), torch.randn(1, 3, lent))
gathered = (*records.gather(keys, values), records.bias, records.owns)
rows = query.reshape(1, 3, 3, 64)


def folded():
    return F.scaled_dot_product_attention(rows, keys, values, attn_mask=bias.unsqueeze(2), scale=0.125)


def borrowed():
    return ragged.attend(query, keys, values, bias, gathered, None, 0.125)


def gather():
    return records.gather(keys, values)


def timed(fn, calls=300):
    for _ in range(20):
        fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


results = {name: [] for name in ("folded", "ragged", "gather")}
for _ in range(7):  # interleaved rounds
    for name, fn in (("folded", folded), ("ragged", borrowed), ("gather", gather)):
        results[name].append(timed(fn))
print(f"{slots} slots, {lent} borrowed per owner: " + ", ".join(
    f"{name} {statistics.median(v):.0f} us" for name, v in results.items()))
