"""Few-shot examples (JSONL) shipped as package data."""
