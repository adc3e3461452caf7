"""Prompt templates (jinja2 files) shipped as package data; read them with :func:`lrpipe.prompting.load_prompt`."""
