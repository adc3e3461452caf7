"""Evaluation: multimodal benchmarks, lm-eval text suite, arena scoring; see the evaluation issue."""
