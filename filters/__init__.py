"""Filters: small named row predicates with a reason string, run as a chain by the runner."""
