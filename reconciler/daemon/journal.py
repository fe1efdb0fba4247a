"""The journal: what the daemon did and saw, in SQLite (WAL) in the state directory.

One file, ``STATE_DIR/journal.db``, written by the daemon (and by ``zlayer job
run`` without a daemon) and read by ``zlayer history``, ``events``, ``job ls``,
``status`` and ``plan``. WAL lets those readers run while the daemon writes.

Tables: ``reconciles`` (every run of the loop: trigger, revision, plan JSON,
outcomes, duration), ``events`` (exits, restarts, health changes, refusals),
``runs`` (job and cron runs), ``crashes`` (per replica: restart count, backoff
streak and the time of the next restart — what survives a daemon restart, so a
crash loop keeps its pace and its counters never go down), ``revisions``
(revisions marked bad or refused) and ``meta`` (the last good revision and its
spec files, the last fire time of each cron service).

Reconciles, events and runs older than the retention are deleted; crash state
and marks stay as long as their workload or revision matters.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.backoff import describe_wait
from reconciler.errors import JournalDamaged
from reconciler.redact import Scrubber, scrub_data

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.db"
MAX_ROWS = 20_000
"""Per table, whatever the retention: a crash loop must not fill the disk."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reconciles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    trigger TEXT NOT NULL,
    revision TEXT,
    outcome TEXT NOT NULL DEFAULT 'running',
    summary TEXT NOT NULL DEFAULT '',
    plan TEXT,
    outcomes TEXT,
    duration REAL
);
CREATE INDEX IF NOT EXISTS reconciles_started ON reconciles(started);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    service TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    exit_code INTEGER,
    revision TEXT,
    log_tail TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS crashes (
    target TEXT PRIMARY KEY,
    restarts INTEGER NOT NULL DEFAULT 0,
    streak INTEGER NOT NULL DEFAULT 0,
    last_instance TEXT,
    exit_code INTEGER,
    crashed_at REAL,
    next_at REAL,
    restarted_at REAL,
    held TEXT
);
CREATE TABLE IF NOT EXISTS revisions (
    revision TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

RUN_STATES = ("running", "succeeded", "failed", "skipped", "lost")


@dataclass(frozen=True, slots=True)
class Crash:
    """A replica's crash state: ``restarts`` only grows; ``streak`` sets the next wait."""

    target: str
    restarts: int
    streak: int
    last_instance: str | None
    exit_code: int | None
    crashed_at: float | None
    next_at: float | None
    restarted_at: float | None
    held: str | None
    """``shutdown`` / ``isolate`` (errors.on_panic): not restarted until a new
    revision or ``zlayer daemon retry``."""

    def describe(self, now: float) -> str:
        """``crash-looping: 7 restarts, next in 40s`` (or why it is not restarted)."""
        noun = "restart" if self.restarts == 1 else "restarts"
        if self.held == "shutdown":
            return f"stopped after a crash (on_panic: shutdown); {self.restarts} {noun}"
        if self.held == "isolate":
            return f"isolated after a crash (on_panic: isolate); {self.restarts} {noun}"
        if self.held == "failed":
            return f"failed: gave up after {self.restarts} {noun} (backoff give_up_after)"
        if self.next_at is not None and self.next_at > now:
            wait = describe_wait(self.next_at - now)
            return f"crash-looping: {self.restarts} {noun}, next in {wait}"
        return f"crash-looping: {self.restarts} {noun}, restart due"


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    deployment: str
    service: str
    trigger: str
    status: str
    started: float
    finished: float | None
    exit_code: int | None
    revision: str | None
    log_tail: str
    note: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "deployment": self.deployment,
            "service": self.service,
            "trigger": self.trigger,
            "status": self.status,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "exit_code": self.exit_code,
            "revision": self.revision,
            "note": self.note,
        }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _move_aside(path: Path) -> Path:
    """``journal.db`` (and its WAL files) renamed ``journal.db.damaged-<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


class Journal:
    """The journal at ``path``; one connection, used from one thread."""

    def __init__(self, path: Path, *, retention_days: float = 14.0, recover: bool = False) -> None:
        """Open (or make) the journal at ``path``. A damaged one (not a database, or
        failing SQLite's quick check) is :class:`JournalDamaged`; with ``recover`` (the
        daemon, its owner) it is moved aside instead, kept for inspection under a name
        :attr:`moved_aside` gives, and a new one is started."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.retention = retention_days * 86400
        self.moved_aside: Path | None = None
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            if not recover:
                raise JournalDamaged(
                    f"{path}: the journal is damaged ({exc}); the daemon moves it aside "
                    "and starts a new one when it starts"
                ) from exc
            self.moved_aside = _move_aside(path)
            log.warning(
                "%s: the journal was damaged (%s); moved aside to %s, a new one started",
                path, exc, self.moved_aside,
            )  # fmt: skip
            self._db = self._open(path)
        path.chmod(0o600)
        self.scrub: Scrubber = Scrubber()
        """Cuts the clear values of the specs being applied out of every text row
        (the daemon sets it for each desired state it applies)."""

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        _db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        try:
            _db.row_factory = sqlite3.Row
            _db.execute("PRAGMA busy_timeout=10000")
            _db.execute("PRAGMA journal_mode=WAL")
            _db.execute("PRAGMA synchronous=NORMAL")
            checked = _db.execute("PRAGMA quick_check").fetchone()[0]
            if checked != "ok":
                raise sqlite3.DatabaseError(f"quick check: {checked}")
            _db.executescript(_SCHEMA)
        except BaseException:
            _db.close()
            raise
        return _db

    @classmethod
    def in_state_dir(
        cls, state_dir: Path, retention_days: float = 14.0, *, recover: bool = False
    ) -> Journal:
        return cls(state_dir / JOURNAL_FILE, retention_days=retention_days, recover=recover)

    @staticmethod
    def exists(state_dir: Path) -> bool:
        return (state_dir / JOURNAL_FILE).is_file()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- reconciles -----------------------------------------------------------------------

    def start_reconcile(self, trigger: str, at: float) -> int:
        with self._write():
            cursor = self._db.execute(
                "INSERT INTO reconciles(started, trigger) VALUES (?, ?)", (at, trigger)
            )
        return int(cursor.lastrowid or 0)

    def finish_reconcile(
        self,
        reconcile: int,
        *,
        at: float,
        revision: str | None,
        outcome: str,
        summary: str,
        plan: Mapping[str, Any] | None = None,
        outcomes: Sequence[Mapping[str, Any]] | None = None,
        duration: float | None = None,
    ) -> None:
        """``duration``: measured on a monotonic clock by the caller (a wall clock that
        jumps meanwhile would make it negative or hours long); else ``at`` − started."""
        with self._write():
            self._db.execute(
                "UPDATE reconciles SET finished=?, revision=?, outcome=?, summary=?, plan=?,"
                " outcomes=?, duration=COALESCE(?, ? - started) WHERE id=?",
                (
                    at,
                    revision,
                    outcome,
                    self.scrub(summary),
                    json.dumps(scrub_data(plan, self.scrub)) if plan is not None else None,
                    json.dumps(scrub_data(outcomes, self.scrub)) if outcomes is not None else None,
                    None if duration is None else max(0.0, duration),
                    at,
                    reconcile,
                ),
            )
            self._prune(at)

    def reconciles(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM reconciles ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        out = []
        for row in rows:
            item = dict(row)
            item["plan"] = json.loads(item["plan"]) if item["plan"] else None
            item["outcomes"] = json.loads(item["outcomes"]) if item["outcomes"] else None
            out.append(item)
        return out

    def reconcile_totals(self) -> dict[str, Any]:
        """Counts by outcome, and the sum and count of durations (for metrics)."""
        by_outcome = {
            row["outcome"]: row["n"]
            for row in self._db.execute(
                "SELECT outcome, COUNT(*) AS n FROM reconciles GROUP BY outcome"
            )
        }
        row = self._db.execute(
            "SELECT COALESCE(SUM(duration), 0) AS total, COUNT(duration) AS n FROM reconciles"
        ).fetchone()
        return {"by_outcome": by_outcome, "duration_sum": row["total"], "count": row["n"]}

    # --- events ---------------------------------------------------------------------------

    def event(self, target: str, kind: str, message: str, at: float) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO events(at, target, kind, message) VALUES (?, ?, ?, ?)",
                (at, target, kind, self.scrub(message)),
            )

    def events(
        self, limit: int = 50, target: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT * FROM events WHERE 1=1"
        args: list[Any] = []
        if target:
            query += " AND (target = ? OR target LIKE ?)"
            args += [target, f"{target}/%"]
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [dict(row) for row in self._db.execute(query, args)]

    # --- crash state ----------------------------------------------------------------------

    def crash(self, target: str) -> Crash | None:
        row = self._db.execute("SELECT * FROM crashes WHERE target = ?", (target,)).fetchone()
        return Crash(**dict(row)) if row else None

    def crashes(self) -> dict[str, Crash]:
        return {
            row["target"]: Crash(**dict(row)) for row in self._db.execute("SELECT * FROM crashes")
        }

    def crash_loops(self, now: float) -> dict[str, str]:
        """Replicas in a crash loop (target → what the backoff will do), for plan notes."""
        return {t: c.describe(now) for t, c in self.crashes().items() if c.streak}

    def record_crash(
        self,
        target: str,
        *,
        instance: str,
        exit_code: int | None,
        at: float,
        next_at: float | None,
        held: str | None,
    ) -> Crash:
        """A crash of ``instance`` (the replica's start time, or another id of that run):
        the streak grows by one. Recording the same instance again changes nothing."""
        with self._write():
            current = self.crash(target)
            if current is not None and current.last_instance == instance:
                return current
            self._db.execute(
                "INSERT INTO crashes(target, streak, last_instance, exit_code, crashed_at,"
                " next_at, held) VALUES (?, 1, ?, ?, ?, ?, ?)"
                " ON CONFLICT(target) DO UPDATE SET streak = streak + 1,"
                " last_instance = excluded.last_instance, exit_code = excluded.exit_code,"
                " crashed_at = excluded.crashed_at, next_at = excluded.next_at,"
                " held = excluded.held",
                (target, instance, exit_code, at, next_at, held),
            )
        crash = self.crash(target)
        assert crash is not None
        return crash

    def count_restart(self, target: str, at: float) -> None:
        """The daemon restarts the replica: the counter grows (it never goes down).
        Counted when the restart is decided, so a daemon killed during it cannot lose it."""
        with self._write():
            self._db.execute(
                "UPDATE crashes SET restarts = restarts + 1, next_at = NULL, restarted_at = ?"
                " WHERE target = ?",
                (at, target),
            )

    def end_streak(self, target: str) -> None:
        """The replica ran healthy long enough: the next crash waits the initial delay
        again. The restart count stays."""
        with self._write():
            self._db.execute(
                "UPDATE crashes SET streak = 0, next_at = NULL, held = NULL WHERE target = ?",
                (target,),
            )

    def release_held(self) -> list[str]:
        """``zlayer daemon retry``: replicas held by on_panic, or given up on (``failed``),
        go back to the backoff rules."""
        with self._write():
            rows = self._db.execute("SELECT target FROM crashes WHERE held IS NOT NULL").fetchall()
            # a replica that was given up on starts a new streak, its held crash the
            # first of it: else its next crash would give up at once
            self._db.execute(
                "UPDATE crashes SET streak = CASE WHEN held = 'failed' THEN 1 ELSE streak END,"
                " held = NULL, next_at = NULL"
            )
        return [row["target"] for row in rows]

    def forget_crash(self, target: str) -> None:
        """The replica is gone from the runtime and the specs."""
        with self._write():
            self._db.execute("DELETE FROM crashes WHERE target = ?", (target,))

    # --- revisions ------------------------------------------------------------------------

    def mark_revision(self, revision: str, state: str, reason: str, at: float) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO revisions(revision, state, reason, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(revision) DO UPDATE SET state = excluded.state,"
                " reason = excluded.reason, at = excluded.at",
                (revision, state, self.scrub(reason), at),
            )

    def revision_mark(self, revision: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT state, reason FROM revisions WHERE revision = ?", (revision,)
        ).fetchone()
        return (row["state"], row["reason"]) if row else None

    def clear_marks(self, state: str = "bad") -> int:
        with self._write():
            cursor = self._db.execute("DELETE FROM revisions WHERE state = ?", (state,))
        return cursor.rowcount

    # --- meta -----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def put(self, key: str, value: Any) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # --- job runs -------------------------------------------------------------------------

    def start_run(
        self,
        run: str,
        deployment: str,
        service: str,
        *,
        trigger: str,
        revision: str | None,
        at: float,
        status: str = "running",
        note: str = "",
    ) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO runs(id, deployment, service, trigger, status, started, revision,"
                " note, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run,
                    deployment,
                    service,
                    trigger,
                    status,
                    at,
                    revision,
                    note,
                    None if status == "running" else at,
                ),
            )

    def finish_run(
        self,
        run: str,
        *,
        status: str,
        exit_code: int | None,
        log_tail: str,
        at: float,
        note: str = "",
    ) -> None:
        with self._write():
            self._db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, log_tail = ?, finished = ?,"
                " note = CASE WHEN ? = '' THEN note ELSE ? END WHERE id = ?",
                (
                    status,
                    exit_code,
                    self.scrub(log_tail),
                    at,
                    self.scrub(note),
                    self.scrub(note),
                    run,
                ),
            )

    def run(self, run: str) -> Run | None:
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run,)).fetchone()
        return Run(**dict(row)) if row else None

    def runs(
        self,
        limit: int = 20,
        *,
        deployment: str | None = None,
        service: str | None = None,
        status: str | None = None,
    ) -> list[Run]:
        query = "SELECT * FROM runs WHERE 1=1"
        args: list[Any] = []
        for column, value in (("deployment", deployment), ("service", service), ("status", status)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        query += " ORDER BY started DESC, rowid DESC LIMIT ?"
        args.append(limit)
        return [Run(**dict(row)) for row in self._db.execute(query, args)]

    def run_totals(self) -> dict[str, int]:
        return {
            row["status"]: row["n"]
            for row in self._db.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
        }

    # --- retention ------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        cutoff = now - self.retention
        self._db.execute("DELETE FROM reconciles WHERE started < ?", (cutoff,))
        self._db.execute("DELETE FROM events WHERE at < ?", (cutoff,))
        self._db.execute("DELETE FROM runs WHERE started < ? AND status != 'running'", (cutoff,))
        for table, order in (("reconciles", "id"), ("events", "id"), ("runs", "started")):
            self._db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
                f" ORDER BY {order} DESC LIMIT -1 OFFSET ?)",
                (MAX_ROWS,),
            )
