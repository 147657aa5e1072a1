"""Every touch of transformers internals lives in this package: cache layers (cache.py),
heads of one layer at different widths stored without padding (ragged.py), the attention
function, its registration and query capture (attention.py), model introspection
(model.py), cache snapshots, copies and sizes (state.py), RoPE (rope.py).

A compacted layer holds, per KV head, a few physical slots (keys, values, fp32 bias =
beta) that stand for many logical tokens. The model sees it through two numbers:

- `get_seq_length()` is the *logical* length, so new tokens get the RoPE positions and
  `cache_position` they would have had without compaction;
- `get_mask_sizes()` returns `(physical + q_len, logical - physical)`, so transformers
  builds the causal mask in physical coordinates (the trick `DynamicSlidingWindowLayer`
  plays for its window).

beta reaches the logits without a forked modeling file: `update()` returns the layer's
keys as a view that carries the layer's bias (`BIAS_ATTRIBUTE`), and the registered
"agentmem" attention function applies it:

- one new token (decode): the bias is SDPA's additive float mask, and the query heads
  that share a KV head are folded into rows of one head, so the mask is (B, H_kv, 1, k)
  and nothing as large as the keys is copied per step;
- several new tokens (a prefill chunk): the keys get one extra column holding
  `beta / scaling` and the queries a column of ones, so `scaling * q'.k'` =
  `scaling * q.k + beta`, and the values a zero column (SDPA's fast CPU kernel needs
  equal key and value widths). A float mask there would be (B, H_q, q, k).

Both were measured against the full cache and against attending to the compacted slots
apart with a log-sum-exp merge; see docs/decode.md. A layer whose heads borrow slots from
each other (ragged.py) takes that two-call path: one call over the layer, one over each
head's borrowed slots, merged by their log-sum-exps. Layers without beta return plain keys
and the function is plain SDPA (at decode with GQA, folded the same way: it is faster).
"""

from .attention import (
    ATTENTION_NAME,
    QueryCapture,
    agentmem_attention,
    attention_forward,
    capture_queries,
    disable,
    enable,
    register,
)
from .cache import BIAS_ATTRIBUTE, CompactedCache, CompactedLayer
from .model import (
    TESTED_TRANSFORMERS,
    KVGeometry,
    attention_modules,
    attention_scalings,
    check_transformers_version,
    full_attention_layers,
    kv_geometry,
    last_logits_only,
    new_cache,
    sliding_layers,
    text_config,
)
from .ragged import Borrowed, pack, unpack
from .state import (
    cache_from_state,
    cache_size,
    cache_state,
    compacted_runs,
    copy_cache,
    crop_cache,
    drop_span,
    remapped,
    replace_span,
    snap_span,
    span_slots,
    splice_runs,
)
