"""``near-dup``: near-duplicates by MinHash LSH over word 5-gram shingles of the normalized text.

Vectorized NumPy MinHash (``bench/neardup.py`` measures it against datasketch on the same rows): words
are hashed once per distinct word, shingle hashes are rolling polynomial combinations of word hashes,
and the ``num_perm`` hash functions are multiply-shift hashes ``(a·x + b) >> 32`` applied to a block
of shingles at a time, reduced to per-row minima with ``np.minimum.reduceat``.

Global like ``dedup`` and resumable in the same way, in phases under ``.work/NN-near-dup/``:

1. **signatures** (per input unit, by its owner rank): the MinHash signature of every row that reaches
   this filter, and one 64-bit hash per LSH band.
2. **bands** (band ``k`` by rank ``k % world_size``): rows sharing a band hash are candidates; each is
   paired with the smallest id of its bucket, and the pair is kept only if the signatures' estimated
   Jaccard similarity reaches ``threshold`` (this removes LSH false positives).
3. **clusters** (every rank computes the same result; whoever finishes first writes it): connected
   components of the verified pairs; the smallest id of a component wins, the others are rejected
   with the winner's id and the similarity to their closest neighbour as detail.

Texts with no words have no signature and are never near-duplicates (``empty`` handles them).
Chains of similar texts (A~B, B~C) form one component, as in every MinHash-LSH dedup; with a high
threshold such chains are short.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from lrpipe.filters.base import register
from lrpipe.filters.dedup import GlobalFilter, sorted_groups
from lrpipe.filters.text import normalize
from lrpipe.phases import run_phase
from lrpipe.shards import write_table

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd constant for polynomial combination of hashes
_EMPTY = np.uint32(0xFFFFFFFF)


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows per band) with bands·rows ≤ num_perm minimizing the weighted areas of false
    positives (similarity below ``threshold`` yet candidates) and false negatives (above, yet not)."""
    best, best_err = (1, num_perm), math.inf
    lo, hi = np.linspace(0.0, threshold, 200), np.linspace(threshold, 1.0, 200)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo ** r) ** b, lo)
            fn = np.trapezoid((1 - hi ** r) ** b, hi)
            err = fp_weight * fp + (1 - fp_weight) * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def word_hashes(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the words of the normalized texts, flat, and each text's offsets into them."""
    import xxhash

    words = pc.utf8_split_whitespace(pa.array([normalize(t) or None for t in texts], pa.string()))
    offsets = words.offsets.to_numpy().astype(np.int64)
    enc = pc.dictionary_encode(words.flatten())
    vocab = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in enc.dictionary.to_pylist()),
                        dtype=np.uint64, count=len(enc.dictionary))
    return vocab[enc.indices.to_numpy()], offsets


def minhash(texts: list[str | None], num_perm: int = 128, ngram: int = 5, seed: int = 1,
            block: int = 1 << 16) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32; a text with no words gets all 0xFFFFFFFF.

    A text shorter than ``ngram`` words is one shingle of all its words."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2 ** 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2 ** 63, num_perm, dtype=np.uint64)
    wh, offsets = word_hashes(texts)
    n = len(texts)
    lengths = np.diff(offsets)
    n_shingles = np.where(lengths > 0, np.maximum(lengths - ngram + 1, 1), 0)
    sig = np.full((n, num_perm), _EMPTY, dtype=np.uint32)
    total = int(n_shingles.sum())
    if total == 0:
        return sig
    first = np.repeat(offsets[:-1], n_shingles)
    start = first + (np.arange(total) - np.repeat(np.cumsum(n_shingles) - n_shingles, n_shingles))
    end = np.repeat(offsets[1:], n_shingles)
    acc = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            idx = start + j
            acc = acc * _MIX + np.where(idx < end, wh[np.minimum(idx, len(wh) - 1)], np.uint64(0))
        # blocks of whole rows, about `block` shingles each
        row_start = np.cumsum(n_shingles) - n_shingles
        rows_with = np.flatnonzero(n_shingles)
        starts_with = row_start[rows_with]
        i = 0
        while i < len(rows_with):
            j = int(np.searchsorted(starts_with, starts_with[i] + block, side="left"))
            j = max(j, i + 1)
            rs = rows_with[i:j]
            s0 = int(row_start[rs[0]])
            s1 = int(row_start[rs[-1]] + n_shingles[rs[-1]])
            h = ((acc[s0:s1, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
            sig[rs] = np.minimum.reduceat(h, row_start[rs] - s0, axis=0)
            i = j
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band, shape (n, bands)."""
    out = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(bands):
            h = np.full(sig.shape[0], np.uint64(k + 1), dtype=np.uint64)
            for c in range(k * rows, (k + 1) * rows):
                h = h * _MIX + sig[:, c].astype(np.uint64)
            out[:, k] = h
    return out


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of every node 0..n-1: the smallest node of its connected component (min-label
    propagation with pointer jumping, vectorized)."""
    label = np.arange(n)
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        while True:
            nxt = new[new]
            if np.array_equal(nxt, new):
                break
            new = nxt
        if np.array_equal(new, label):
            return label
        label = new


@register
class NearDup(GlobalFilter):
    name = "near-dup"

    def __init__(self, field: str = "instruction", threshold: float = 0.8, num_perm: int = 128, ngram: int = 5,
                 bands: int | None = None, seed: int = 1, **params: Any) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-dup: threshold must be in (0, 1], got {threshold}")
        b, r = (bands, num_perm // bands) if bands else lsh_params(threshold, num_perm)
        super().__init__(field=field, threshold=threshold, num_perm=num_perm, ngram=ngram, bands=b, seed=seed,
                         **params)
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.bands, self.rows = b, r

    def _schema(self) -> pa.Schema:
        return pa.schema([("id", pa.string()), ("sig", pa.list_(pa.uint32(), self.num_perm)),
                          *((f"band{k}", pa.uint64()) for k in range(self.bands))])

    def prepare(self, workdir: Path, units: list[Any], read_unit: Any, rank: int, world_size: int,
                workers: int = 1) -> None:
        self.workdir = workdir
        opts = {"rank": rank, "world_size": world_size, "workers": workers, "timeout": self.wait_timeout,
                "poll": self.poll_seconds}
        sig_files = run_phase(workdir / "signatures", units, lambda u: f"{u.part}.arrow",
                              lambda u, f: self._write_signatures(f, read_unit(u)), what="near-dup signature", **opts)
        edge_files = run_phase(workdir / "edges", range(self.bands), lambda k: f"b{k:03d}.arrow",
                               lambda k, f: self._band_edges(f, k, sig_files), what="near-dup band", **opts)
        (workdir / "losers").mkdir(parents=True, exist_ok=True)
        if not (workdir / "losers" / "clusters.arrow").exists():  # small: every rank computes it
            self._clusters(workdir / "losers" / "clusters.arrow", edge_files)

    def _write_signatures(self, path: Path, table: pa.Table) -> None:
        texts = table.column(self.field).to_pylist() if table.num_rows else []
        sig = minhash(texts, self.num_perm, self.ngram, self.seed)
        bands = band_hashes(sig, self.bands, self.rows)
        ids = table.column(self.id_field).cast(pa.string()) if table.num_rows else pa.array([], pa.string())
        cols = {"id": ids, "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), self.num_perm)}
        cols.update({f"band{k}": pa.array(bands[:, k], pa.uint64()) for k in range(self.bands)})
        t = pa.table(cols, schema=self._schema())
        write_table(path, t)

    def _band_edges(self, out: Path, k: int, sig_files: list[Path]) -> None:
        """Candidates of band ``k``, each paired with its bucket's smallest id, verified by Jaccard."""
        tables, sigs = [], []
        for fi, f in enumerate(sig_files):
            with pa.memory_map(str(f)) as src:
                t = ipc.open_file(src).read_all()
            s = t.column("sig").combine_chunks() if t.num_rows else None
            sigs.append(s.values.to_numpy().reshape(-1, self.num_perm) if s is not None else None)
            nonempty = np.flatnonzero(sigs[-1][:, 0] != _EMPTY) if t.num_rows else np.zeros(0, np.int64)
            tables.append(pa.table({"h": t.column(f"band{k}").take(nonempty), "id": t.column("id").take(nonempty),
                                    "f": pa.array(np.full(len(nonempty), fi, np.int32)),
                                    "r": pa.array(nonempty.astype(np.int32))}))
        t = pa.concat_tables(tables)
        empty = pa.table({"id": pa.array([], pa.string()), "other": pa.array([], pa.string()),
                          "jaccard": pa.array([], pa.float32())})
        if t.num_rows < 2:
            write_table(out, empty)
            return
        t, head = sorted_groups(t, "h")
        members = np.flatnonzero(head != np.arange(len(head)))
        heads = head[members]
        fcol, rcol = t.column("f").to_numpy(), t.column("r").to_numpy()

        def gather(pos: np.ndarray) -> np.ndarray:
            out_ = np.empty((len(pos), self.num_perm), dtype=np.uint32)
            for fi in np.unique(fcol[pos]):
                m = fcol[pos] == fi
                out_[m] = sigs[fi][rcol[pos[m]]]
            return out_

        jac = np.zeros(len(members), dtype=np.float32)
        for s in range(0, len(members), 1 << 16):
            sl = slice(s, s + (1 << 16))
            jac[sl] = (gather(members[sl]) == gather(heads[sl])).mean(axis=1)
        ok = jac >= self.threshold
        ids = t.column("id")
        res = pa.table({"id": ids.take(pa.array(members[ok])), "other": ids.take(pa.array(heads[ok])),
                        "jaccard": pa.array(jac[ok], pa.float32())}, schema=empty.schema)
        write_table(out, res)

    def _clusters(self, out: Path, edge_files: list[Path]) -> None:
        parts = []
        for f in edge_files:
            with pa.memory_map(str(f)) as src:
                parts.append(ipc.open_file(src).read_all())
        e = pa.concat_tables(parts)
        schema = pa.schema([("id", pa.string()), ("detail", pa.string())])
        if e.num_rows == 0:
            write_table(out, schema.empty_table())
            return
        # number the ids in sorted order, so the smallest label of a component is its smallest id
        names = pc.unique(pa.concat_arrays([e.column("id").combine_chunks(), e.column("other").combine_chunks()]))
        names = names.take(pc.sort_indices(names))
        a = pc.index_in(e.column("id"), value_set=names).to_numpy()
        b = pc.index_in(e.column("other"), value_set=names).to_numpy()
        jac = e.column("jaccard").to_numpy()
        label = components(len(names), a, b)
        # closest neighbour of every node (both directions of every edge)
        nodes, nbrs, sims = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([jac, jac])
        order = np.lexsort((-sims, nodes))
        nodes, nbrs, sims = nodes[order], nbrs[order], sims[order]
        firsts = np.flatnonzero(np.r_[True, nodes[1:] != nodes[:-1]])
        best = dict(zip(nodes[firsts].tolist(), zip(nbrs[firsts].tolist(), sims[firsts].tolist())))
        losers = np.flatnonzero(label != np.arange(len(names)))
        py = names.to_pylist()
        details = []
        for i in losers.tolist():
            nb, sim = best[i]
            details.append(f"near-duplicate of {py[label[i]]} (Jaccard≈{sim:.2f} with {py[nb]})")
        res = pa.table({"id": pa.array([py[i] for i in losers.tolist()], pa.string()),
                        "detail": pa.array(details, pa.string())}, schema=schema)
        write_table(out, res)
