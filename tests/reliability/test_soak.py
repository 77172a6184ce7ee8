"""Servers that fail 30 % of requests at random: every image still lands exactly once.

A small version of ``scripts/soak`` (see ``soak.py`` for the fault mix and docs/reliability.md
for the numbers): three datasets of about thirty images each, a few byte-identical copies and
one image large enough to go to S3 in parts. Checked on the server, by content hash: no image
lost, none stored twice, none truncated; processing started once per dataset and finished;
every file ``uploaded`` or ``duplicate`` in status; the daemon still running, and it stops
cleanly.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import Box, wait_until
from tests.fakes.nodeodm import FakeNodeODM
from tests.fakes.pix4dcloud import FakePix4DCloud
from tests.reliability.soak import (
    TARGETS,
    Flight,
    SoakOptions,
    make_flights,
    node_landing,
    run_soak,
    serve,
)

CI_RUN = SoakOptions(
    files=88,
    datasets=3,
    duplicates=4,
    big=1,
    rate=0.3,
    # Enough ambiguous uploads that a NodeODM task is usually replaced at least once, few
    # enough that a 28-image task goes through between two of them after a handful of tries,
    # replacements waiting 5 s, 10 s... after the first.
    ambiguous_rate=0.02,
    # The daemon waits 5 s, then 10, 20... after a failed processing start: at 30 % there a
    # run's length is a lottery; the long soak keeps 30 % everywhere.
    processing_rate=0.1,
    seed=20240611,
    deadline_s=100.0,
)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_every_image_lands_exactly_once_while_30_percent_of_requests_fail(
    box: Box, target: str
) -> None:
    result = run_soak(target, box, CI_RUN)

    assert result.problems == [], "\n".join(result.problems) + "\n" + box.log()[-3000:]
    assert result.lost == 0
    assert result.sent_twice == 0
    assert result.truncated == 0
    assert set(result.states.values()) == {"processed"}
    # The servers really were hostile: about 30 % of what the daemon sent failed.
    assert sum(result.faults.values()) >= 0.2 * result.requests, result.faults


# Single faults on which the soak once failed, made deterministic so that a regression shows
# in every run rather than in one long soak out of several; see docs/reliability.md.

QUIET = SoakOptions(files=8, datasets=1, duplicates=0, big=0, rate=0.0, ambiguous_rate=0.0)


def _ingest(box: Box, flights: list[Flight]) -> subprocess.Popen[bytes]:
    proc = box.start()
    for flight in flights:
        (box.root / "staging" / flight.name).rename(box.inbox / flight.name)
    return proc


def _settled(box: Box, name: str) -> dict[str, Any]:
    dataset: dict[str, Any] = wait_until(
        lambda: (
            box.datasets().get(name, {}).get("state") in {"processed", "failed"}
            and box.datasets()[name]
        ),
        what=f"{name} processed or failed",
    )
    return dataset


def test_a_refused_nodeodm_commit_is_tried_again(box: Box) -> None:
    # {"error"} says the node did nothing; the task is whole and a later commit goes through.
    flights = make_flights(box.root / "staging", QUIET)
    with serve("nodeodm", box, QUIET) as node:
        assert isinstance(node, FakeNodeODM)
        node.faults.add("error200", "commit")
        proc = _ingest(box, flights)
        dataset = _settled(box, flights[0].name)
        assert dataset["state"] == "processed", dataset["detail"]
        landing = node_landing(node, flights[0])
        assert sorted(landing.stored.elements()) == sorted(flights[0].images)
        assert box.stop(proc) == 0


def test_a_lost_start_reply_then_a_failed_project_read_still_ends_processed(box: Box) -> None:
    # A project that cannot be read is not a project that did not start: registering or
    # starting again would be refused once processing runs.
    flights = make_flights(box.root / "staging", QUIET)
    with serve("pix4dcloud", box, QUIET) as cloud:
        assert isinstance(cloud, FakePix4DCloud)
        cloud.api_faults.add("start_ambiguous")
        cloud.api_faults.add("status503", "project", times=2)
        proc = _ingest(box, flights)
        dataset = _settled(box, flights[0].name)
        assert [p.start_calls for p in cloud.projects().values()] == [1]
        assert dataset["state"] == "processed", dataset["detail"]
        assert box.stop(proc) == 0


def test_without_faults_no_nodeodm_task_is_replaced(box: Box) -> None:
    # A dataset's first task is not a replacement: no warning, no images "sent again".
    flights = make_flights(box.root / "staging", QUIET)
    with serve("nodeodm", box, QUIET):
        proc = _ingest(box, flights)
        assert _settled(box, flights[0].name)["state"] == "processed"
        assert box.stop(proc) == 0
    # The operator's sign that images were sent again (README, NodeODM target).
    assert "new task for the dataset" not in box.log()
