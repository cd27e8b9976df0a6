"""The fault-test report: per scenario, what was submitted, what ended, and every loss or
duplicate found. Printed at the end of the run (see conftest.pytest_terminal_summary)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

HEADER = ("scenario", "submitted", "final", "lost", "duplicate runs", "missing events",
          "duplicated transitions", "redelivered events")


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    submitted: int
    final: int
    lost: int
    duplicate_runs: int
    missing_events: int
    duplicated_transitions: int
    redelivered_events: int

    def row(self) -> tuple[Any, ...]:
        return (self.scenario, self.submitted, self.final, self.lost, self.duplicate_runs,
                self.missing_events, self.duplicated_transitions, self.redelivered_events)


RESULTS: list[ScenarioResult] = []


async def count_scenario(scenario: str, db: asyncpg.Connection, job_ids: Sequence[Any],
                         events: Iterable[tuple[str, str, int]], duplicate_runs: int
                         ) -> ScenarioResult:
    """`events`: (job_id, event_id, seq) as received. Missing: a seq in 1..last transition of
    the job never received; duplicated transition: two event ids with one seq; redelivered:
    the same event id received again (allowed: delivery is at least once)."""
    ids = [str(i) for i in job_ids]
    rows = await db.fetch("SELECT id::text, status, transition_seq FROM t_job_info "
                          "WHERE id = ANY($1::uuid[])", ids)
    final = sum(1 for r in rows if r["status"] in ("SUCCEEDED", "FAILED", "ABORTED"))
    seen_ids: dict[str, set[str]] = defaultdict(set)
    by_seq: dict[tuple[str, int], set[str]] = defaultdict(set)
    redelivered = 0
    for job_id, event_id, seq in events:
        if event_id in seen_ids[job_id]:
            redelivered += 1
        seen_ids[job_id].add(event_id)
        by_seq[(job_id, seq)].add(event_id)
    missing = sum(1 for r in rows for seq in range(1, r["transition_seq"] + 1)
                  if not by_seq.get((r["id"], seq)))
    duplicated = sum(len(v) - 1 for v in by_seq.values() if len(v) > 1)
    result = ScenarioResult(scenario, len(ids), final, len(ids) - final, duplicate_runs,
                            missing, duplicated, redelivered)
    RESULTS.append(result)
    return result


def render(results: Sequence[ScenarioResult]) -> str:
    rows = [HEADER, *(r.row() for r in results)]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |"
                     + ("\n|" + "---|" * len(HEADER) if n == 0 else "")
                     for n, row in enumerate(rows))
