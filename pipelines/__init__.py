"""Pipelines: stages that turn sources into shard directories (Magpie sampling, filtering, translation)."""
