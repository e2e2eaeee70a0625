"""Optional integrations with other libraries, each imported on demand:
``leanattn.integrations.transformers`` (``attn_implementation="leanattn"``)."""
