"""Optional integrations with other libraries, each imported on demand:
``leanattn.integrations.transformers`` (``attn_implementation="leanattn"``) and
``leanattn.integrations.flashinfer`` (FlashInfer's paged-decode wrappers, ``plan()``/``run()`` over CSR page tables,
with no FlashInfer installed)."""
