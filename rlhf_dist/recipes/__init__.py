"""Runnable jobs behind the `rlhf-dist` commands (each a `main(argv)` around a typed config)."""
