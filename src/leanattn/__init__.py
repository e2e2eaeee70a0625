"""leanattn: exact attention kernels for long-context inference and training.

Public API
----------
decode            stream-K (LeanAttention) decode over contiguous or paged, ragged, GQA caches
merge_states      exact merge of partial attention states (out, lse)
merge_state       the same of two states held apart (FlashInfer's merge_state, natural-log LSE)
merge_state_in_place  the second state merged into the first, in place (FlashInfer's merge_state_in_place)
reference         float64 references of every op
qk_sparse_attention    causal attention with dropped queries/keys (sparse flash attention)
hash_sparse_attention  causal attention within hash buckets (sparse flash attention)
sparse            the sparse package (lsh_buckets)
bifurcated_decode decode of many samples sharing a prompt: the shared prefix is read once per prompt
cascade_decode    decode over nested shared KV levels (system prompt, document, own tokens)
mla_decode        multi-head latent attention (DeepSeek) decode: every query head against one latent cache
generate          generation for Llama-family models: SDPA prefill, paged leanattn decode, CUDA graphs
models            the compact Llama decoder, checkpoint loader and named shapes used by generate

The transformers plug-in is ``leanattn.integrations.transformers`` and FlashInfer's paged-decode wrappers
(``BatchDecodeWithPagedKVCacheWrapper``, ``BatchPrefillWithPagedKVCacheWrapper`` for a few tokens a request,
``BatchMLAPagedAttentionWrapper``, ``MultiLevelCascadeAttentionWrapper``:
CSR page tables, plan/run) are
``leanattn.integrations.flashinfer``; flash-attn's ``flash_attn_with_kvcache`` is ``leanattn.integrations.flash_attn``
(each imported on demand).
"""
from . import reference
from .merges import merge_state, merge_state_in_place, merge_states
from .ops.decode import decode
from .ops.bifurcated import bifurcated_decode, cascade_decode
from .ops.mla import mla_decode
from . import sparse
from . import distributed  # tree_decode, ring_decode, ShardedKVCache (torch.distributed)
from .sparse import hash_sparse_attention, qk_sparse_attention
from . import models
from .generate import generate

__version__ = "0.1.0"
__all__ = ["decode", "merge_states", "merge_state", "merge_state_in_place", "reference", "__version__"]
__all__ += ["qk_sparse_attention", "hash_sparse_attention", "sparse"]
__all__ += ["bifurcated_decode", "cascade_decode", "mla_decode"]
__all__ += ["generate", "models"]
