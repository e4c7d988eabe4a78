"""The daemon's scheduler on a fake clock: nothing here sleeps."""

from __future__ import annotations

from ocrd.base.clock import FakeClock
from ocrd.daemon.scheduler import Scheduler


def test_rescan_comes_due_after_its_period() -> None:
    clock = FakeClock()
    s = Scheduler(clock, rescan=600, ping=None)
    assert not s.rescan_due()
    assert s.timeout() == 600
    clock.advance(599.9)
    assert not s.rescan_due()
    clock.advance(0.1)
    assert s.rescan_due()
    s.rescanned()
    assert not s.rescan_due()
    assert s.timeout() == 600


def test_watchdog_ping_every_interval() -> None:
    clock = FakeClock()
    s = Scheduler(clock, rescan=600, ping=15)
    assert s.ping_due()  # the first ping goes out at once
    assert not s.ping_due()
    assert s.timeout() == 15
    clock.advance(15)
    assert s.ping_due()


def test_revisits_come_due_in_time_order() -> None:
    clock = FakeClock()
    s = Scheduler(clock, rescan=600, ping=None)
    s.revisit(b"b", clock.time() + 5)
    s.revisit(b"a", clock.time() + 2)
    assert s.timeout() == 2
    clock.advance(2)
    assert s.due_revisits() == {b"a"}
    assert s.timeout() == 3
    clock.advance(10)
    assert s.due_revisits() == {b"b"}
    assert s.timeout() == 588  # 600 - (2 + 10)


def test_coarse_revisits_are_never_early_and_at_most_a_bucket_late() -> None:
    clock = FakeClock(wall=1000.0)
    s = Scheduler(clock, rescan=600, ping=None)
    s.coarse_s = 60.0
    s.revisit(b"a", 1001.0, coarse=True)
    s.revisit(b"b", 1059.0, coarse=True)
    s.revisit(b"c", 1061.0, coarse=True)
    assert s.timeout() == 20.0  # the bucket ending at 1020 (= 17 * 60)
    clock.advance(19.9)
    assert s.due_revisits() == set()
    clock.advance(0.1)
    assert s.due_revisits() == {b"a"}
    assert s.timeout() == 60.0  # b and c share the bucket ending at 1080
    clock.advance(59.9)
    assert s.due_revisits() == set()
    clock.advance(0.1)
    assert s.due_revisits() == {b"b", b"c"}
    assert s.timeout() == 520.0


def test_revisits_of_paths_that_are_gone_are_compacted_away() -> None:
    clock = FakeClock()
    s = Scheduler(clock, rescan=600, ping=None)
    now = clock.time()
    for i in range(9000):
        s.revisit(b"f%d" % i, now + 86400, coarse=True)  # kept files crossing max_age later
        s.revisit(b"f%d" % i, now + 5)  # and a settle revisit each
    s.revisit(b"f1", now + 3)  # a second, earlier one for the same path
    alive = {b"f%d" % i for i in range(0, 9000, 3)}
    assert not s.compact_due()
    s.gone(6000)  # two in three went, as a churn leaves them
    assert s.compact_due()
    s.compact(alive.__contains__)
    assert not s.compact_due()
    clock.advance(3)
    assert s.due_revisits() == set()  # f1 was gone: its early revisit went with it
    clock.advance(2)
    assert s.due_revisits() == alive
    clock.advance(86400)
    assert s.due_revisits() == alive
    s.rescanned()
    assert s.timeout() == 600  # nothing left to revisit
