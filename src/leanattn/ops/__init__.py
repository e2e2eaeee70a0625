"""Public operations: validation, configuration and launch around the kernels."""
