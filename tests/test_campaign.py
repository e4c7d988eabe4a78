"""The randomized campaign (tests/campaign.py) against a real ``ocrd run``: a few short seeds.

``python -m bench.campaign`` runs hundreds. A failing seed prints the command that replays it;
``OCRD_CAMPAIGN_SEED``, ``OCRD_CAMPAIGN_STEPS``, ``OCRD_CAMPAIGN_ENGINE=1`` and
``OCRD_CAMPAIGN_OFF`` (operations switched off, comma-separated) set what runs."""

from __future__ import annotations

import os

import pytest

from tests.campaign import Campaign, replay_command, seeds_from_env

STEPS = int(os.environ.get("OCRD_CAMPAIGN_STEPS", "40"))
ENGINE = os.environ.get("OCRD_CAMPAIGN_ENGINE") == "1"
# Every operation runs unless OCRD_CAMPAIGN_OFF names some to switch off.
OFF = frozenset(filter(None, os.environ.get("OCRD_CAMPAIGN_OFF", "").split(",")))


@pytest.mark.parametrize("seed", seeds_from_env([1, 2, 3]))
def test_a_random_campaign_breaks_no_promise(seed: int) -> None:
    result = Campaign(seed, STEPS, engine=ENGINE, off=OFF).run()
    assert result.ok, "\n".join(
        [
            *result.violations[:20],
            f"crash: {result.crash}",
            f"ops: {result.ops}",
            f"replay: {replay_command(seed, STEPS, ENGINE, OFF)}",
        ]
    )
