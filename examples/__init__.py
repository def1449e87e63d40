"""Runnable examples that use vqtok as a library (`python -m examples.<name>` from the repository root)."""
