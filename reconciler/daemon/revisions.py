"""Which revision the daemon applies: the source's candidate, or the last good one.

A candidate is applied unless it is refused by its source (a rewrite, a bad
signature), marked bad (its rollout was rolled back), not valid, or asks for what the
runtime cannot do; then the last good revision — the last one that ran through,
kept in the journal with its spec files so a restarted daemon keeps running it
whatever the source says — is compiled again and applied instead. Every mark is an
event in the journal, said once per revision.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.daemon.journal import Journal
from reconciler.desired import CompileInputs, DesiredState
from reconciler.drivers.base import Driver
from reconciler.executor import Report
from reconciler.reconcile import Compiled, check_runtime, compile_files, limits_message
from reconciler.sources.base import Candidate, Source
from reconciler.sources.files import Collected
from reconciler.spec.load import SourceFile
from reconciler.spec.problems import Problem

log = logging.getLogger("reconciler.daemon")


@dataclass(frozen=True, slots=True)
class Choice:
    """What a reconcile applies: ``desired`` (None: nothing good to apply yet)."""

    desired: DesiredState | None
    candidate: str | None
    """The candidate revision, when ``desired`` is it (not the last good one)."""
    files: tuple[SourceFile, ...] = ()
    note: str = ""


class Revisions:
    """The daemon's choice of revision and its memory of the last good one."""

    def __init__(
        self,
        journal: Journal,
        source: Source,
        inputs: CompileInputs,
        clock: Callable[[], float],
        cache: Path | None = None,
    ) -> None:
        self.journal = journal
        self.source = source
        self.inputs = inputs
        self.clock = clock
        self.cache = cache
        """The state directory whose compile cache spares unchanged revisions a compile."""
        self.applied: DesiredState | None = None
        """The last good revision, compiled."""
        self.applied_at: float | None = None
        self.problem: str | None = None
        """Why the candidate revision is not what runs (invalid, refused, bad)."""
        self._good_files: tuple[SourceFile, ...] = ()
        """The spec files of :attr:`applied`, to compile it again as a fallback."""
        self._marked: set[str] = set()

    def _compile(self, files: Collected, revision: str) -> Compiled:
        compiled = compile_files(files, self.inputs, revision, cache=self.cache)
        if compiled.desired is not None and not compiled.invalid and not files.files:
            return Compiled(None, (Problem("(source)", None, "", "no spec files"),), 0, True)
        return compiled

    async def choose(self, driver: Driver) -> Choice:
        good = self.journal.get("good")
        applied = good["revision"] if good and good.get("source") == self.source.identity else None
        candidate = await self.source.load(applied)
        if candidate is None:
            return self._fallback(driver, "the source has no revision yet (see source status)")
        if applied is not None and candidate.revision == applied and self.applied is not None:
            compiled = self._compile(candidate.files, candidate.revision)
            if compiled.desired is not None and not compiled.invalid:
                self.problem = None
                return Choice(compiled.desired, candidate.revision, candidate.files.files)
        return self._judge_candidate(driver, candidate)

    def _judge_candidate(self, driver: Driver, candidate: Candidate) -> Choice:
        refusal = candidate.refused or self._bad(candidate.revision)
        if refusal is not None:
            self._mark(candidate.revision, "refused" if candidate.refused else "bad", refusal)
            return self._fallback(driver, refusal)
        compiled = self._compile(candidate.files, candidate.revision)
        if compiled.desired is None or compiled.invalid:
            listing = "\n".join(p.render() for p in compiled.problems[:50])
            why = f"revision {candidate.revision[:19]} is not valid:\n{listing}"
            self._mark(candidate.revision, "invalid", why)
            return self._fallback(driver, why)
        checked, errors = check_runtime(driver, compiled.desired)
        if errors:
            why = f"revision {candidate.revision[:19]}: " + limits_message(
                driver.name, errors, "applied"
            )
            self._mark(candidate.revision, "invalid", why)
            return self._fallback(driver, why)
        self.problem = None
        return Choice(checked, candidate.revision, candidate.files.files)

    def _bad(self, revision: str) -> str | None:
        mark = self.journal.revision_mark(revision)
        if mark is not None and mark[0] == "bad":
            return (
                f"revision {revision[:19]} is marked bad ({mark[1]}); waiting for a new"
                " revision or `zlayer daemon retry`"
            )
        return None

    def _mark(self, revision: str, state: str, reason: str) -> None:
        self.problem = reason
        if revision in self._marked:
            return
        self._marked.add(revision)
        if state != "bad":
            self.journal.mark_revision(revision, state, reason, self.clock())
        self.journal.event("source", f"revision-{state}", reason, self.clock())
        log.warning("%s", self.journal.scrub(reason))

    def _fallback(self, driver: Driver, why: str) -> Choice:
        """The last good revision (as compiled now), when the candidate cannot be used."""
        if self.applied is None:
            return Choice(None, None, note=f"{why}; no good revision to keep running")
        compiled = self._compile(Collected(self._good_files, ()), self.applied.revision)
        if compiled.desired is None or compiled.invalid:
            rendered = "; ".join(p.render() for p in compiled.problems[:5])
            return Choice(None, None, note=f"{why}; the last good revision fails now: {rendered}")
        checked, _ = check_runtime(driver, compiled.desired)
        return Choice(checked, None, self._good_files, note=why)

    def judge(self, choice: Choice, report: Report) -> tuple[str, str]:
        """(outcome, summary) of applying ``choice``; a rolled-back candidate is marked
        bad (outcome ``rolled-back``: the caller reconciles again, to the last good)."""
        counts = report.counts()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        rolled = [o for o in report.outcomes if o.status == "rolled_back"]
        if rolled and choice.candidate is not None:
            why = f"rollout failed and was rolled back: {rolled[0].message}"
            self.journal.mark_revision(choice.candidate, "bad", why, self.clock())
            self.journal.event(
                "source", "revision-bad", f"{choice.candidate[:19]}: {why}", self.clock()
            )
            self.problem = f"revision {choice.candidate[:19]} is marked bad: {why}"
            return "rolled-back", summary
        if not report.ok:
            return "failed", summary
        self.good(choice)
        return "applied", summary

    def good(self, choice: Choice) -> None:
        """``choice`` ran through: it is the last good revision (kept in the journal, spec
        files included, so a restarted daemon can keep running it whatever the source)."""
        assert choice.desired is not None
        revision = choice.desired.revision
        if self.applied is None or self.applied.revision != revision:
            self.applied_at = self.clock()
            self.journal.put(
                "good",
                {
                    "revision": revision,
                    "source": self.source.identity,
                    "applied_at": self.applied_at,
                    "files": [[f.name, base64.b64encode(f.data).decode()] for f in choice.files],
                },
            )
            self.journal.event("source", "applied", f"revision {revision[:19]}", self.applied_at)
        self.applied = choice.desired
        self._good_files = choice.files

    def restore(self) -> None:
        """The last good revision as the journal kept it (a daemon starting again)."""
        good = self.journal.get("good")
        if not good:
            return
        files = tuple(SourceFile(name, base64.b64decode(data)) for name, data in good["files"])
        compiled = self._compile(Collected(files, ()), good["revision"])
        if compiled.desired is not None and not compiled.invalid:
            self.applied, self._good_files = compiled.desired, files
            self.applied_at = good.get("applied_at")

    def forget_marks(self) -> int:
        """``zlayer daemon retry``: bad marks cleared; every revision is judged afresh."""
        self._marked.clear()
        return self.journal.clear_marks("bad")
