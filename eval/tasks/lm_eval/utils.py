"""Document filters for our lm-eval task YAMLs (referenced as ``!function utils.<name>``)."""


def _group(doc: dict) -> str:
    return str(doc.get("group") or doc.get("category_group") or "").strip().lower()


def local_docs(dataset):
    """BertaQA's local questions (Basque culture)."""
    return dataset.filter(lambda d: _group(d).startswith("local"))


def global_docs(dataset):
    """BertaQA's global questions (general knowledge)."""
    return dataset.filter(lambda d: _group(d).startswith("global"))
