"""ocrd/daemon/backoff.py: retries of a file that could not go come later and later, per version."""

from __future__ import annotations

from ocrd.daemon.backoff import Backoff

V1 = (1, 10, 100.0)
V2 = (1, 11, 101.0)


def test_the_wait_doubles_from_a_minute_up_to_an_hour() -> None:
    b = Backoff()
    waits = [b.failed(b"f", V1, now=0.0)[1] for _ in range(9)]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert b.failed(b"f", V1, now=0.0)[0] == 10  # the attempt count goes on


def test_a_changed_file_starts_again_at_one_minute() -> None:
    b = Backoff()
    for _ in range(4):
        b.failed(b"f", V1, now=0.0)
    assert b.failed(b"f", V2, now=0.0) == (1, 60)


def test_waiting_until_holds_only_the_same_version_and_only_until_due() -> None:
    b = Backoff()
    b.failed(b"f", V1, now=1000.0)
    assert b.waiting_until(b"f", V1, now=1059.0) == 1060.0
    assert b.waiting_until(b"f", V1, now=1060.0) is None
    assert b.waiting_until(b"f", V2, now=1001.0) is None
    assert b.waiting_until(b"other", V1, now=1001.0) is None


def test_an_event_lifts_the_wait_but_keeps_the_count() -> None:
    b = Backoff()
    b.failed(b"f", V1, now=0.0)
    b.failed(b"f", V1, now=0.0)
    b.lift(b"f")
    assert b.waiting_until(b"f", V1, now=0.0) is None
    assert b.failed(b"f", V1, now=0.0) == (3, 240)


def test_nothing_is_kept_for_paths_that_are_gone() -> None:
    b = Backoff()
    for p in (b"a", b"b", b"c"):
        b.failed(p, V1, now=0.0)
    b.forget(b"a")
    b.keep_only(lambda p: p != b"b")
    assert b.paths() == {b"c"}
    b.clear()
    assert len(b) == 0
