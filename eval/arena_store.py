"""The votes of a live arena (``pipe arena serve``), durable the moment they are acknowledged.

SQLite in WAL mode with ``synchronous=FULL``: each vote is one transaction, committed before the
server answers, so a vote the participant saw accepted survives a kill -9 or a power cut, and a
second submission of the same battle's vote is refused by the primary key, never counted twice.
Participants (the form: language, education, consent) live in their own table, apart from the
battles and their prompts; the export (:meth:`ArenaStore.export_rows`) writes the released arena's
layout (``HiTZ/ebaluatoia``: a winner per dimension, both conversations, the voter), which
``pipe arena`` reads as it reads the released votes, with usernames dropped on request.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from itertools import combinations
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
  id TEXT PRIMARY KEY, username TEXT, language TEXT, education TEXT, consent INTEGER NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS battles (
  id TEXT PRIMARY KEY, participant TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
  status TEXT NOT NULL, conv_a TEXT, conv_b TEXT, error TEXT, created REAL, updated REAL);
CREATE TABLE IF NOT EXISTS votes (
  battle TEXT PRIMARY KEY REFERENCES battles(id), winner TEXT, winner_content TEXT, winner_language TEXT,
  created REAL);
"""
#: the dimensions people vote on, as the released layout names their columns
COLUMNS = {"overall": "winner", "content": "winner_content", "language": "winner_language"}
CHOICES = {"a": "model_a", "b": "model_b", "tie": "tie", "bothbad": "tie (bothbad)"}


class VoteError(ValueError):
    """A vote that cannot be recorded (unknown or failed battle, bad choice, already voted)."""


class ArenaStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def _tx(self, sql: str, args: tuple[Any, ...]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(sql, args)
                self.db.execute("COMMIT")
            except Exception:
                self.db.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------------------- writing
    def add_participant(self, username: str | None, language: str | None, education: str | None,
                        consent: bool) -> str:
        pid = uuid.uuid4().hex
        self._tx("INSERT INTO participants VALUES (?, ?, ?, ?, ?, ?)",
                 (pid, username or None, language, education, int(bool(consent)), time.time()))
        return pid

    def new_battle(self, participant: str, model_a: str, model_b: str) -> str:
        bid = uuid.uuid4().hex
        now = time.time()
        self._tx("INSERT INTO battles VALUES (?, ?, ?, ?, 'open', '[]', '[]', NULL, ?, ?)",
                 (bid, participant, model_a, model_b, now, now))
        return bid

    def save_conversations(self, battle: str, conv_a: list[dict[str, str]], conv_b: list[dict[str, str]]) -> None:
        self._tx("UPDATE battles SET conv_a = ?, conv_b = ?, updated = ? WHERE id = ?",
                 (json.dumps(conv_a, ensure_ascii=False), json.dumps(conv_b, ensure_ascii=False), time.time(), battle))

    def fail(self, battle: str, error: str) -> None:
        """A battle an endpoint could not finish: kept as failed, never as a vote."""
        self._tx("UPDATE battles SET status = 'failed', error = ?, updated = ? WHERE id = ? AND status = 'open'",
                 (error[:500], time.time(), battle))

    def vote(self, battle: str, winners: dict[str, str]) -> None:
        """Record one vote (``{"overall": "a", "content": "tie", ...}``) in one transaction; it is on
        disk when this returns."""
        cols = {}
        for dim, choice in winners.items():
            if dim not in COLUMNS:
                raise VoteError(f"unknown dimension {dim!r} (have {', '.join(COLUMNS)})")
            if choice not in CHOICES:
                raise VoteError(f"unknown choice {choice!r} for {dim} (have {', '.join(CHOICES)})")
            cols[COLUMNS[dim]] = CHOICES[choice]
        if not cols:
            raise VoteError("a vote needs at least one dimension")
        with self.lock:
            row = self.db.execute("SELECT status FROM battles WHERE id = ?", (battle,)).fetchone()
            if row is None:
                raise VoteError("no such battle")
            if row[0] != "open":
                raise VoteError(f"this battle is {row[0]}")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?)",
                                (battle, cols.get("winner"), cols.get("winner_content"), cols.get("winner_language"),
                                 time.time()))
                self.db.execute("UPDATE battles SET status = 'voted', updated = ? WHERE id = ?", (time.time(), battle))
                self.db.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                self.db.execute("ROLLBACK")
                raise VoteError("this battle already has a vote") from e
            except Exception:
                self.db.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------------------- reading
    def battle(self, battle: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT id, participant, model_a, model_b, status, conv_a, conv_b FROM battles "
                                  "WHERE id = ?", (battle,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "participant": row[1], "model_a": row[2], "model_b": row[3], "status": row[4],
                "conv_a": json.loads(row[5] or "[]"), "conv_b": json.loads(row[6] or "[]")}

    def pair_counts(self, models: list[str]) -> dict[tuple[str, str], int]:
        """Battles per unordered pair (failed ones not counted): what keeps pairs balanced."""
        counts = {tuple(sorted(p)): 0 for p in combinations(models, 2)}
        with self.lock:
            rows = self.db.execute("SELECT model_a, model_b, COUNT(*) FROM battles WHERE status != 'failed' "
                                   "GROUP BY model_a, model_b").fetchall()
        for a, b, n in rows:
            key = tuple(sorted((a, b)))
            if key in counts:
                counts[key] += n
        return counts

    def votes_by(self, participant: str) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM votes v JOIN battles b ON v.battle = b.id "
                                   "WHERE b.participant = ?", (participant,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = dict(self.db.execute("SELECT status, COUNT(*) FROM battles GROUP BY status").fetchall())
            rows["votes"] = self.db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        return rows

    def export_rows(self, drop_usernames: bool = False) -> list[dict[str, Any]]:
        """Every vote in the released arena's layout, oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT b.id, b.model_a, b.model_b, v.winner, v.winner_content, v.winner_language, b.conv_a, "
                "b.conv_b, p.username, p.id, v.created FROM votes v JOIN battles b ON v.battle = b.id "
                "JOIN participants p ON b.participant = p.id ORDER BY v.created, b.id").fetchall()
        out = []
        for r in rows:
            rec = {"id": r[0], "model_a": r[1], "model_b": r[2], "winner": r[3], "winner_content": r[4],
                   "winner_language": r[5], "conv_a": json.loads(r[6] or "[]"), "conv_b": json.loads(r[7] or "[]"),
                   "tstamp": r[10]}
            if not drop_usernames:
                rec["username"] = r[8] or r[9]
            out.append(rec)
        return out
