"""pipe: build instruction data, multimodal data and models for a low-resource language.

The package is ``lrpipe`` (PyPI's ``pipe`` name is taken); the command is ``pipe``. The user's
top-level folders (``pipelines/``, ``filters/``, ``training/``, ``eval/``, ``prompts/``, ``fewshot/``)
install as sub-packages of this one namespace.
"""

__version__ = "0.1.0"
