"""``pipe push``: upload a shard directory as a Hub dataset (parquet or arrow + a generated card).

The folder to upload is always built locally first; ``--dry-run DIR`` stops there, which is how the
tests check it (no network here) and how a user reviews the card before publishing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from lrpipe.errors import InputError, PipeError
from lrpipe.report import dataset_card
from lrpipe.shards import ShardDir, read_arrow


def build_upload_folder(path: str | Path, repo_id: str, dest: str | Path, fmt: str = "parquet",
                        include_rejected: bool = False) -> Path:
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
    for split, srcs in splits:
        (dest / "data" / split).mkdir(parents=True, exist_ok=True)
        for f in srcs:
            table = read_arrow(f)
            if table.num_rows == 0:  # the Hub's parquet reader refuses empty files
                continue
            if fmt == "arrow":
                target = dest / "data" / split / f.name
                shutil.copyfile(f, target)
            else:
                target = dest / "data" / split / (f.stem + ".parquet")
                pq.write_table(table, target)
            files[split].append(str(target.relative_to(dest)))
    (dest / "README.md").write_text(dataset_card(m, repo_id, files))
    (dest / "manifest.json").write_text(json.dumps(m, indent=2, default=str))
    return dest


def push(path: str | Path, repo_id: str, *, dry_run: str | Path | None = None, fmt: str = "parquet",
         private: bool = False, include_rejected: bool = False, revision: str | None = None) -> str:
    if dry_run is not None:
        folder = build_upload_folder(path, repo_id, dry_run, fmt, include_rejected)
        return f"dry run: the upload folder is {folder}"
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_upload_folder(path, repo_id, Path(tmp) / "upload", fmt, include_rejected)
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                          commit_message="Upload with pipe push")
    return f"https://huggingface.co/datasets/{repo_id}"
