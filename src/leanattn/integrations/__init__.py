"""Optional integrations with other libraries, each imported on demand:
``leanattn.integrations.transformers`` (``attn_implementation="leanattn"``),
``leanattn.integrations.flashinfer`` (FlashInfer's paged-decode wrappers, ``plan()``/``run()`` over CSR page tables,
with no FlashInfer installed) and ``leanattn.integrations.flash_attn`` (flash-attn's ``flash_attn_with_kvcache``)."""
