"""``pipe mt``: sentence-level machine translation of a text column (CC3M captions → CC3M-EUS), README: "Sentence-level MT".

Per unit: split every text into sentences with nltk's Punkt, translate each **distinct** sentence once
(a cache shared by all units of the run), in batches sorted by length so padding is small, and put
each text back together from its sentences with the original separators. Image columns and every other
column pass through untouched; the output adds ``<field>_<tgt>``.

Sentence splitting: Punkt is unsupervised and its trained parameters normally come from the ``punkt``
data package, which cannot be downloaded here. We use an **untrained** Punkt with a fixed list of
abbreviations per source language (``ABBREVIATIONS``, extendable in a preset): training it on the input
would make the split of a caption depend on which unit it was in, i.e. on ``--rows-per-unit`` and on
the number of ranks; a fixed splitter keeps outputs identical across layouts and resumes.

Backends behind one interface (:class:`MTBackend`): transformers MarianMT (CPU, or GPU in bf16) and
CTranslate2 (the HF model converted once into a cache folder). Both use the model's own generation
defaults (beam size, max length), as the study did ("default decoding").
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from lrpipe.errors import InputError
from lrpipe.runner import MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

log = logging.getLogger(__name__)

PRESETS = Path(__file__).parent / "recipes" / "mt"
DEFAULT_MODEL = "HiTZ/mt-hitz-en-eu"
ABBREVIATIONS = {
    "en": ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig", "inc", "ltd",
           "co", "corp", "dept", "approx", "u.s", "u.k", "a.m", "p.m", "jan", "feb", "mar", "apr", "jun", "jul",
           "aug", "sep", "sept", "oct", "nov", "dec", "mt", "ft", "ave", "rd"],
    "es": ["sr", "sra", "srta", "dr", "dra", "etc", "ud", "uds", "pág", "núm", "av", "avda", "ee.uu"],
}


# ------------------------------------------------------------------------------------------ splitting
class SentenceSplitter:
    """Untrained Punkt with known abbreviations; returns sentence spans so separators survive."""

    def __init__(self, lang: str = "en", extra_abbreviations: list[str] | None = None,
                 max_chars: int = 1000) -> None:
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

        params = PunktParameters()
        params.abbrev_types = set(ABBREVIATIONS.get(lang, [])) | set(extra_abbreviations or [])
        self.punkt = PunktSentenceTokenizer(params)
        self.max_chars = max_chars

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the sentences; a sentence longer than ``max_chars`` is cut at whitespace
        into pieces no longer than that (the MT model would otherwise truncate it)."""
        out = []
        for s, e in self.punkt.span_tokenize(text):
            while e - s > self.max_chars:
                cut = text.rfind(" ", s, s + self.max_chars)
                cut = cut if cut > s else s + self.max_chars
                out.append((s, cut))
                s = cut
                while s < e and text[s].isspace():
                    s += 1
            if e > s:
                out.append((s, e))
        return out


# ------------------------------------------------------------------------------------------ backends
class MTBackend:
    """Translate a batch of sentences (already sorted by length by the caller)."""

    name = "backend"

    def translate(self, sentences: list[str]) -> list[str]:
        raise NotImplementedError

    def length(self, sentence: str) -> int:
        """Length used for sorting into batches (tokens when cheap, else characters)."""
        return len(sentence)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


def _resolve(model: str) -> str:
    """A local folder, checked as every model path is (:func:`lrpipe.models.resolve_model`: one line
    naming a folder that does not exist or is not a model); a Hub id through the local cache
    (downloads where the network allows)."""
    from lrpipe.models import resolve_model

    path = resolve_model(model)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path)


class TransformersMT(MTBackend):
    name = "transformers"

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch = torch
        self.path = _resolve(model)
        self.model_id = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size

    def translate(self, sentences: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(sentences), self.batch_size):
            chunk = sentences[i:i + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True).to(self.device)
            with self.torch.inference_mode():
                gen = self.model.generate(**enc)
            out += self.tokenizer.batch_decode(gen, skip_special_tokens=True)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id, "device": self.device, "batch_size": self.batch_size}


def ct2_dir(path: str) -> Path:
    """Cache folder of the converted model, keyed by the source folder's files (so a changed model is
    converted again)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    root = Path(os.environ.get("LRPIPE_CACHE", Path.home() / ".cache" / "lrpipe")) / "ct2"
    return root / f"{Path(path).name}-{h.hexdigest()[:12]}"


class CTranslate2MT(MTBackend):
    name = "ctranslate2"

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64,
                 compute_type: str = "default") -> None:
        import ctranslate2
        from transformers import AutoTokenizer, GenerationConfig

        self.path = _resolve(model)
        self.model_id = model
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        out = ct2_dir(self.path)
        if not (out / "model.bin").exists():
            import shutil

            from ctranslate2.converters import TransformersConverter

            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            TransformersConverter(self.path).convert(str(tmp), force=True)
            if out.exists():  # another process converted it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, out)
        self.device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.translator = ctranslate2.Translator(str(out), device=self.device, compute_type=compute_type,
                                                 intra_threads=threads if self.device == "cpu" else 0)
        try:
            gen = GenerationConfig.from_pretrained(self.path)
        except OSError:
            gen = GenerationConfig()
        self.beam_size = int(gen.num_beams or 1)
        # HF's max_length counts the decoder start token; CTranslate2's decoding length does not
        self.max_length = max(1, int(gen.max_length or 512) - 1)
        self.batch_size = batch_size

    def translate(self, sentences: list[str]) -> list[str]:
        tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in
                  self.tokenizer(sentences, truncation=True)["input_ids"]]
        res = self.translator.translate_batch(tokens, max_batch_size=self.batch_size, beam_size=self.beam_size,
                                              max_decoding_length=self.max_length)
        return [self.tokenizer.convert_tokens_to_string(
            [t for t in r.hypotheses[0] if t not in self.tokenizer.all_special_tokens]) for r in res]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id, "device": self.device, "beam_size": self.beam_size,
                "batch_size": self.batch_size}


def make_backend(name: str, model: str, device: str | None = None, batch_size: int = 64) -> MTBackend:
    if name == "transformers":
        return TransformersMT(model, device, batch_size)
    if name == "ctranslate2":
        return CTranslate2MT(model, device, batch_size)
    raise ValueError(f"unknown MT backend '{name}'; choose transformers or ctranslate2")


# ------------------------------------------------------------------------------------------ stage
class SentenceCache:
    """Translations of distinct sentences, shared by all units of a run (LRU-bounded)."""

    def __init__(self, max_entries: int = 5_000_000) -> None:
        self.data: OrderedDict[str, str] = OrderedDict()
        self.max_entries = max_entries
        self.hits = self.misses = 0

    def get(self, s: str) -> str | None:
        v = self.data.get(s)
        if v is not None:
            self.data.move_to_end(s)
        return v

    def put(self, s: str, t: str) -> None:
        self.data[s] = t
        if len(self.data) > self.max_entries:
            self.data.popitem(last=False)


class MTStage(MapStage):
    name = "mt"

    def __init__(self, source: Source, backend: MTBackend, field: str, src: str = "en", tgt: str = "eu",
                 model_id: str = DEFAULT_MODEL, abbreviations: list[str] | None = None,
                 max_chars: int = 1000) -> None:
        self.source, self.backend, self.field, self.src, self.tgt = source, backend, field, src, tgt
        self.model_id = model_id
        self.splitter = SentenceSplitter(src, abbreviations, max_chars)
        self.abbreviations, self.max_chars = abbreviations or [], max_chars
        self.cache = SentenceCache()

    @property
    def out_field(self) -> str:
        return f"{self.field}_{self.tgt}"

    def config(self) -> dict[str, Any]:
        return {"field": self.field, "src": self.src, "tgt": self.tgt, "model": self.model_id,
                "backend": self.backend.name, "abbreviations": sorted(self.abbreviations),
                "max_chars": self.max_chars, "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def provenance(self) -> dict[str, Any]:
        return {"mt": self.backend.describe(), "splitter": "nltk Punkt, untrained, fixed abbreviations"}

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def translate_texts(self, texts: list[str]) -> tuple[list[str], dict[str, int]]:
        """Translate texts sentence by sentence; each distinct sentence once (cache), batches sorted by
        length. Returns the translations and counts for the manifest."""
        spans = [self.splitter.spans(t) for t in texts]
        todo: dict[str, None] = {}
        n_sent = 0
        for t, sp in zip(texts, spans):
            for s, e in sp:
                n_sent += 1
                sent = t[s:e]
                if sent not in todo and self.cache.get(sent) is None:
                    todo[sent] = None
        new = sorted(todo, key=self.backend.length)
        hits_before = n_sent - len(new)
        if new:
            for s, tr in zip(new, self.backend.translate(new)):
                self.cache.put(s, tr)
        local = {s: self.cache.get(s) for s in new}
        out = []
        for t, sp in zip(texts, spans):
            parts, prev = [], 0
            for k, (s, e) in enumerate(sp):
                if k:
                    parts.append(t[prev:s])  # the original separator (usually one space)
                sent = t[s:e]
                parts.append(local.get(sent) or self.cache.get(sent) or "")
                prev = e
            out.append("".join(parts))
        return out, {"sentences": n_sent, "translated": len(new), "cache_hits": hits_before}

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.source.read_unit(unit)
        values = table.column(self.field).to_pylist()
        good = [i for i, v in enumerate(values) if isinstance(v, str)]
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        texts, stats = self.translate_texts([values[i] for i in good])
        kept = table.take(pa.array(good, pa.int64()))
        if self.out_field in kept.column_names:
            kept = kept.drop_columns([self.out_field])
        kept = kept.append_column(self.out_field, pa.array(texts, pa.string()))
        rejected = table.take(pa.array(bad, pa.int64()))
        rejected = rejected.append_column(REJECT_REASON, pa.array(["mt_bad_input"] * len(bad), pa.string()))
        rejected = rejected.append_column(REJECT_DETAIL, pa.array(
            [f"{unit.name} row {i}: field '{self.field}' is {type(values[i]).__name__}, not text" for i in bad],
            pa.string()))
        return UnitOutput(kept=kept, rejected=rejected, rows_in=table.num_rows, stats=stats)


# ------------------------------------------------------------------------------------------ presets
class Preset(BaseModel):
    """An MT preset (``pipelines/recipes/mt/*.yaml``): which text column, model, languages, splitter hints."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    field: str | None = None
    fields: list[str] | None = None
    model: str | None = None
    src: str | None = None
    tgt: str | None = None
    input: str | None = None
    abbreviations: list[str] | None = None
    max_chars: int | None = None
    backend: str | None = None


def load_preset(name: str) -> dict[str, Any]:
    from lrpipe.config_files import load

    return load(Preset, name, PRESETS, kind="mt preset").model_dump(exclude_none=True)


def pick_field(columns: list[str], preset: dict[str, Any], field: str | None) -> str:
    """The explicit --field, else the first of the preset's known text columns the input has."""
    if field:
        return field
    for f in preset.get("fields") or [preset.get("field", "caption")]:
        if f in columns:
            return f
    raise InputError(f"none of the text columns {preset.get('fields') or [preset.get('field')]} is in the input "
                     f"(columns: {columns}); pass --field")

