"""Model adapters and the pure functions they share (prompting, output parsing, coordinate mapping)."""
