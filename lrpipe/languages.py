"""Language codes, names and per-language columns.

Two things every stage agrees on:

* **Names.** Prompts say "English" and "Basque", not ``en`` and ``eu``. The name comes from the recipe
  or the command line when given (``--tgt-name``), else from the table below (ISO 639-1, plus a few
  639-3 codes of languages without a two-letter one). The language detector (lingua) is *not* asked:
  it knows 75 languages, and a target language it does not know (Galician, Asturian, ...) must still
  be translatable; only the ``language`` check needs a detector (:mod:`lrpipe.langid`: lingua, else
  fastText's lid.176), and it is skipped with a note when none knows the language.
* **Language columns.** A stage that translates column ``X`` into language ``L`` writes ``X_L`` beside
  it (``instruction_eu``, ``conversation_eu``, ``caption_eu``). :func:`language_view` turns such a row
  into its language-``L`` version: ``X_L`` takes the place of ``X`` and other languages' ``X_M`` are
  dropped. ``pipe mix`` uses it for each side of a parallel source and ``pipe pack --language`` for a
  translation directory read directly, so a target-language row means the same thing everywhere.
"""

from __future__ import annotations

import pyarrow as pa

from lrpipe.errors import PipeError

#: ISO 639-1 (and a few 639-3) codes -> English names, for prompts.
NAMES = {
    "af": "Afrikaans", "am": "Amharic", "an": "Aragonese", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan", "br": "Breton",
    "bs": "Bosnian", "ca": "Catalan", "co": "Corsican", "cs": "Czech", "cy": "Welsh", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fo": "Faroese", "fr": "French", "fy": "Western Frisian",
    "ga": "Irish", "gd": "Scottish Gaelic", "gl": "Galician", "gn": "Guarani", "gu": "Gujarati", "ha": "Hausa",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean", "ku": "Kurdish",
    "ky": "Kyrgyz", "la": "Latin", "lb": "Luxembourgish", "lg": "Ganda", "ln": "Lingala", "lo": "Lao",
    "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam",
    "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "nb": "Norwegian Bokmål",
    "ne": "Nepali", "nl": "Dutch", "nn": "Norwegian Nynorsk", "no": "Norwegian", "oc": "Occitan", "om": "Oromo",
    "or": "Odia", "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua",
    "rm": "Romansh", "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda", "sa": "Sanskrit", "sc": "Sardinian",
    "sd": "Sindhi", "se": "Northern Sami", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "sm": "Samoan",
    "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian", "st": "Southern Sotho", "su": "Sundanese",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "tg": "Tajik", "th": "Thai",
    "ti": "Tigrinya", "tk": "Turkmen", "tl": "Tagalog", "tn": "Tswana", "tr": "Turkish", "ts": "Tsonga",
    "tt": "Tatar", "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "wa": "Walloon", "wo": "Wolof", "xh": "Xhosa", "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
    "ast": "Asturian", "fil": "Filipino", "fur": "Friulian", "lij": "Ligurian", "lmo": "Lombard",
    "nap": "Neapolitan", "scn": "Sicilian", "vec": "Venetian", "arn": "Mapudungun", "ext": "Extremaduran",
}


def language_name(code: str, override: str | None = None) -> str:
    """The English name used in prompts: ``override`` when given, else the table."""
    if override:
        return override
    name = NAMES.get(code.strip().lower())
    if name is None:
        raise PipeError(f"no name known for language code '{code}': give it with --src-name/--tgt-name "
                        "(or source_name/target_name in the recipe)")
    return name


def language_view(table: pa.Table, lang: str, languages: list[str] | tuple[str, ...]) -> pa.Table:
    """The table as language ``lang`` sees it: ``X_lang`` replaces ``X`` (taking its place in the
    column order), columns ``X_other`` of the other ``languages`` are dropped, the rest is unchanged."""
    others = [x for x in languages if x != lang]
    drop = [c for c in table.column_names if any(c.endswith(f"_{o}") and len(c) > len(o) + 1 for o in others)]
    if drop:
        table = table.drop_columns(drop)
    suffix = f"_{lang}"
    for c in [c for c in table.column_names if c.endswith(suffix) and len(c) > len(suffix)]:
        base = c[: -len(suffix)]
        col = table.column(c)
        if base in table.column_names:
            i = table.column_names.index(base)
            table = table.drop_columns([c]).set_column(i, base, col)
        else:
            table = table.drop_columns([c]).append_column(base, col)
    return table


def translated_columns(columns: list[str], languages: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """``{lang: [X_lang columns whose X is also present]}``: which languages a table holds versions of."""
    out: dict[str, list[str]] = {}
    for lang in languages:
        cols = [c for c in columns if c.endswith(f"_{lang}") and c[: -len(lang) - 1] in columns]
        if cols:
            out[lang] = cols
    return out
