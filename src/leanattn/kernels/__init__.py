"""Triton kernels. Each computes partial attention states ``(acc, m, l)`` over ranges of KV tiles."""
