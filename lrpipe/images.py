"""Images in rows: the column type every stage writes, the URL columns datasets use, and the check that
rows meant to carry images do. Shared by ``pipe images`` (which fetches), training and evaluation
(which refuse rows that still only point at images), so it lives in the core.
"""

from __future__ import annotations

import pyarrow as pa

from lrpipe.errors import InputError

#: ``{"bytes", "path"}``, as ``datasets.Image`` stores an image
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: where CC3M, the PixMo sets and others publish an image's address
URL_COLUMNS = ("image_url", "url", "img_url")


def url_column(columns: list[str], field: str | None = None) -> str | None:
    """The column holding image URLs: ``field`` when the rows have it, else the first known name."""
    if field:
        return field if field in columns else None
    return next((c for c in URL_COLUMNS if c in columns), None)


def require_images(columns: list[str], image_field: str, where: str) -> None:
    """Refuse, with the fix, an input whose rows reference images by URL but carry none (training or
    scoring them as text-only rows would be silent and wrong)."""
    url = url_column(columns)
    if image_field not in columns and url is not None:
        raise InputError(f"rows reference images by URL ('{url}') but have no '{image_field}' column: fetch "
                         f"them first (pipe images --input {where} --out DIR) and use DIR",
                         path=where, field=image_field)
