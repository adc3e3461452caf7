"""``pipe push``: upload a shard directory as a Hub dataset (parquet or arrow + a dataset card).

The folder to upload is always built locally first; ``--dry-run DIR`` stops there, which is how the
tests check it (no network here) and how a user reviews the card before publishing.

What makes the pushed dataset a good Hub citizen:

* **The card is huggingface_hub's own** (:class:`~huggingface_hub.DatasetCard` with
  :class:`~huggingface_hub.DatasetCardData`): languages (from the stage's configuration: a translation's
  source and target, a mixture's languages; ``--language`` to set them), license (``--license``;
  ``other`` with a sentence saying so when none is given, since a derived dataset inherits its
  sources' terms), task categories (image-text-to-text when rows carry images, translation for MT,
  text-generation otherwise), the size category the Hub filters on, the source datasets read from the
  stage's inputs, and a ``configs`` entry per split. The body keeps the run's counts, rejected rows by
  reason, provenance and configuration.
* **Typed features**: image columns (``{bytes, path}`` structs, as ``pipe images`` and ``datasets``
  write them) are declared as :class:`datasets.Image` in each parquet file's schema metadata and in the
  card's ``dataset_info``, so the viewer shows pictures and ``load_dataset`` returns PIL images.
* **Big pushes**: ``upload_large_folder`` when the installed huggingface_hub has it (resumable,
  multi-commit), else ``upload_folder`` (which since huggingface_hub 1.x batches and resumes by itself
  under hf_xet).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lrpipe.errors import InputError, PipeError
from lrpipe.shards import ShardDir, read_arrow

#: keys of a stage's configuration that name a language (recipes, MT, mixtures)
LANGUAGE_KEYS = ("source_lang", "target_lang", "src", "tgt", "language", "target_language")
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
#: above this many bytes or files, ``upload_large_folder`` (where available) instead of one commit
LARGE_BYTES, LARGE_FILES = 2 * 1024**3, 500


def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>1T")


def is_image_type(t: pa.DataType) -> bool:
    """``struct<bytes: binary, path: string>``: how ``datasets`` stores an Image and ``pipe images`` writes one."""
    if not pa.types.is_struct(t) or {t.field(i).name for i in range(t.num_fields)} != {"bytes", "path"}:
        return False
    kind = t.field("bytes").type
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def features_for(schema: pa.Schema) -> Any:
    """``datasets.Features`` for a shard schema, with image structs typed as :class:`datasets.Image`."""
    import datasets

    feats = datasets.Features.from_arrow_schema(schema.remove_metadata())
    for name in schema.names:
        if is_image_type(schema.field(name).type):
            feats[name] = datasets.Image()
    return feats


def with_features(table: pa.Table, features: Any) -> pa.Table:
    """``table`` carrying ``features`` in its schema metadata, the key ``datasets`` reads back from parquet."""
    meta = dict(table.schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    return table.replace_schema_metadata(meta)


def _walk(obj: Any, keys: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and isinstance(v, str):
                out.append(v)
            else:
                out += _walk(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            out += _walk(v, keys)
    return out


def card_languages(m: dict[str, Any]) -> list[str]:
    """Languages named by the stage's configuration and inputs, in first-seen order."""
    found = _walk(m.get("config"), LANGUAGE_KEYS) + _walk(m.get("inputs"), ("language",))
    if str(m.get("stage", "")).startswith("magpie"):
        found.append("en")  # Magpie samples the instruct model in English (the source side)
    seen: list[str] = []
    for code in found:
        if code and code.isascii() and 2 <= len(code) <= 8 and code not in seen:
            seen.append(code)
    return seen


def card_task_categories(m: dict[str, Any], schema: pa.Schema) -> list[str]:
    stage = str(m.get("stage", ""))
    has_images = any(is_image_type(f.type) for f in schema) or "image_url" in schema.names
    cats = []
    if has_images:
        cats.append("image-text-to-text")
    if stage == "mt" or stage.startswith("translate") or stage == "sample":
        cats.append("translation")
    if not has_images and stage != "mt":
        cats.append("text-generation")
    return cats


def card_sources(m: dict[str, Any]) -> list[str]:
    """Hub datasets among the inputs (local files and shard directories have no Hub name)."""
    out = []
    for inp in m.get("inputs") or []:
        if isinstance(inp, dict) and inp.get("kind") == "hub" and inp.get("hub_id") and inp["hub_id"] not in out:
            out.append(inp["hub_id"])
    return out


def _info(features: Any, rows: int) -> dict[str, Any] | None:
    """The card's ``dataset_info`` (features as the Hub's YAML lists them, as ``push_to_hub`` writes)."""
    try:
        return {"features": features._to_yaml_list(), "splits": [{"name": "train", "num_examples": rows}]}
    except AttributeError:  # a datasets release without the helper: the parquet metadata still types them
        return None


def build_card(m: dict[str, Any], repo_id: str, files: dict[str, list[str]], features: Any, *,
               license: str | None = None, languages: list[str] | None = None,
               task_categories: list[str] | None = None, chain: list[dict[str, Any]] | None = None,
               figures: list[str] | None = None) -> Any:
    """The dataset card (a :class:`huggingface_hub.DatasetCard`) for a finished stage."""
    from huggingface_hub import DatasetCard, DatasetCardData

    t = m["totals"]
    schema = features.arrow_schema
    langs = languages or card_languages(m)
    sources = card_sources(m)
    # rejected rows have their own columns (reason, detail): a config of their own, not a split of the
    # default one (a config's splits share one schema)
    configs = [{"config_name": "default" if split == "train" else split,
                "data_files": [{"split": "train", "path": f"{paths[0].rsplit('/', 1)[0]}/*"}]}
               for split, paths in files.items() if paths]
    data = DatasetCardData(
        language=langs or None,
        license=license or "other",
        size_categories=[size_category(int(t["rows_out"]))],
        task_categories=task_categories or card_task_categories(m, schema),
        source_datasets=sources or None,
        pretty_name=repo_id.split("/")[-1],
        tags=["lrpipe", "synthetic"] if m.get("stage") in ("magpie.sample", "magpie.respond", "translate") else ["lrpipe"],
        configs=configs,
        dataset_info=_info(features, int(t["rows_out"])),
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{_card_body(m, repo_id, sources, license, chain, figures)}")


def lineage(path: str | Path, limit: int = 32) -> list[dict[str, Any]]:
    """The chain of stages that made the shard directory at ``path``, upstream first: each stage's
    command, model, recipe and counts, found through the ``inputs`` every header records. An input
    that is no longer on disk ends the walk there (the card says so)."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    todo = [Path(path)]
    while todo and len(chain) < limit:
        p = todo.pop()
        key = str(p.resolve())
        if key in seen:
            continue
        seen.add(key)
        if not ShardDir.is_shard_dir(p):
            chain.append({"path": str(p), "missing": True})
            continue
        m = ShardDir.open(p).manifest()
        cfg = m.get("config") or {}
        t = m["totals"]
        rec = cfg.get("recipe")
        chain.append({"path": str(p), "stage": m.get("stage"), "model": cfg.get("model"),
                      "recipe": rec if isinstance(rec, str) else rec.get("name") if isinstance(rec, dict) else None,
                      "rows_in": t["rows_in"], "rows_out": t["rows_out"], "rejected_by_reason": t["rejected_by_reason"],
                      "config_hash": m.get("config_hash"), "created_at": m.get("created_at")})
        for inp in m.get("inputs") or []:
            if isinstance(inp, dict) and inp.get("kind") == "shards" and inp.get("path"):
                todo.append(Path(inp["path"]))
    return chain[::-1]


def _lineage_md(chain: list[dict[str, Any]]) -> str:
    rows = []
    for c in chain:
        if c.get("missing"):
            rows.append(f"| `{c['path']}` | (not on disk when pushed) | | | | |")
            continue
        reasons = ", ".join(f"{k} {v:,}" for k, v in c["rejected_by_reason"].items()) or "none"
        rows.append(f"| `{Path(c['path']).name}` | `{c['stage']}` | {c.get('model') or ''} | {c.get('recipe') or ''} "
                    f"| {c['rows_in']:,} → {c['rows_out']:,} | {reasons} |")
    return ("| stage dir | command | model | recipe | rows in → kept | rejected by reason |\n"
            "|---|---|---|---|---:|---|\n" + "\n".join(rows))


def _card_body(m: dict[str, Any], repo_id: str, sources: list[str], license: str | None,
               chain: list[dict[str, Any]] | None = None, figures: list[str] | None = None) -> str:
    """The card's text: what made it, counts and rejected rows by reason, provenance, configuration."""
    t = m["totals"]
    reasons = "\n".join(f"| {k} | {v:,} |" for k, v in t["rejected_by_reason"].items()) or "| (none) | 0 |"
    license_line = ("" if license else "\nNo license was declared when this dataset was pushed (`pipe push --license`): "
                    "the terms of its source datasets and of the models that generated it apply.\n")
    made = ("\n## How this data was made\n\nEvery stage of the chain that produced it, upstream first (from the "
            "manifests `pipe` wrote):\n\n" + _lineage_md(chain) + "\n") if chain else ""
    figs = ("\n## Figures\n\n" + "\n\n".join(f"![{f}](figures/{f}.png)" for f in figures) + "\n") if figures else ""
    source_line = ("\nSource datasets: " + ", ".join(f"[{s}](https://huggingface.co/datasets/{s})" for s in sources)
                   + "\n") if sources else ""
    return f"""
# {repo_id}

Made with pipe (Python package `lrpipe` {m.get('version')}), stage `{m.get('stage')}`.
{source_line}{license_line}
## Counts

| | rows |
|---|---:|
| in | {t['rows_in']:,} |
| kept (train) | {t['rows_out']:,} |
| rejected | {t['rows_rejected']:,} |

Rejected rows by reason:

| reason | rows |
|---|---:|
{reasons}
{made}{figs}
## Provenance

```json
{json.dumps(m.get('provenance'), indent=2, default=str, ensure_ascii=False)}
```

Inputs:

```json
{json.dumps(m.get('inputs'), indent=2, default=str, ensure_ascii=False)}
```

## Configuration (hash `{m.get('config_hash')}`)

```json
{json.dumps(m.get('config'), indent=2, default=str, ensure_ascii=False)}
```
"""


def build_upload_folder(path: str | Path, repo_id: str, dest: str | Path, fmt: str = "parquet",
                        include_rejected: bool = False, *, license: str | None = None,
                        languages: list[str] | None = None, task_categories: list[str] | None = None,
                        figures: dict[str, bytes] | None = None) -> Path:
    """The folder ``pipe push`` uploads: data as parquet (or arrow), the card with the chain that made
    the data, and ``figures`` (PNG bytes by name, drawn by the caller: ``pipe report``'s charts) that
    the card shows."""
    if fmt not in ("parquet", "arrow"):
        raise PipeError(f"--format must be parquet or arrow, not {fmt}")
    sd = ShardDir.open(path)
    m = sd.manifest()
    if not m["complete"]:
        raise PipeError(f"{path} is incomplete ({m['totals']['units_done']}/{m['totals']['units_planned']} units):"
                        " finish the stage before pushing")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InputError("dry-run folder exists and is not empty", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"train": []}
    splits = [("train", sd.data_files())]
    if include_rejected:
        files["rejected"] = []
        splits.append(("rejected", sd.rejected_files()))
    train_features = None
    for split, srcs in splits:
        (dest / "data" / split).mkdir(parents=True, exist_ok=True)
        for f in srcs:
            table = read_arrow(f)
            feats = features_for(table.schema)
            if split == "train" and train_features is None:
                train_features = feats
            if table.num_rows == 0:  # the Hub's parquet reader refuses empty files
                continue
            if fmt == "arrow":
                target = dest / "data" / split / f.name
                shutil.copyfile(f, target)
            else:
                target = dest / "data" / split / (f.stem + ".parquet")
                pq.write_table(with_features(table, feats), target)
            files[split].append(str(target.relative_to(dest)))
    if train_features is None:
        train_features = features_for(pa.schema([("id", pa.string())]))
    for name, png in (figures or {}).items():
        (dest / "figures").mkdir(exist_ok=True)
        (dest / "figures" / f"{name}.png").write_bytes(png)
    card = build_card(m, repo_id, files, train_features, license=license, languages=languages,
                      task_categories=task_categories, chain=lineage(path), figures=sorted(figures or {}))
    card.save(str(dest / "README.md"))
    (dest / "manifest.json").write_text(json.dumps(m, indent=2, default=str))
    return dest


def _folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def push(path: str | Path, repo_id: str, *, dry_run: str | Path | None = None, fmt: str = "parquet",
         private: bool = False, include_rejected: bool = False, revision: str | None = None,
         license: str | None = None, languages: list[str] | None = None,
         task_categories: list[str] | None = None, figures: dict[str, bytes] | None = None) -> str:
    """Build the upload folder (:func:`build_upload_folder`) and upload it, or stop at ``dry_run``."""
    kw = {"license": license, "languages": languages, "task_categories": task_categories, "figures": figures}
    if dry_run is not None:
        folder = build_upload_folder(path, repo_id, dry_run, fmt, include_rejected, **kw)
        return f"dry run: the upload folder is {folder}"
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_upload_folder(path, repo_id, Path(tmp) / "upload", fmt, include_rejected, **kw)
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        nbytes, nfiles = _folder_size(folder)
        large = getattr(api, "upload_large_folder", None)
        if large is not None and (nbytes > LARGE_BYTES or nfiles > LARGE_FILES):
            large(repo_id=repo_id, folder_path=str(folder), repo_type="dataset", revision=revision,
                  private=private)
        else:
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                              commit_message="Upload with pipe push")
    return f"https://huggingface.co/datasets/{repo_id}"
