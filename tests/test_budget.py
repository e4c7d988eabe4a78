"""The budget's decision as plain values: sizes parsed, limits and headroom, LRU order with the
engine's files last, each inode once, every protection kept, and unmet budgets explained."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from ocrd.base.errors import ConfigError
from ocrd.config.load import validate
from ocrd.config.schema import Retention
from ocrd.config.sizes import Amount, format_size, parse_amount, parse_size
from ocrd.daemon.metrics import TotalsCollector
from ocrd.fs.inventory import FileEntry
from ocrd.ops.stats import BudgetNumbers, Totals
from ocrd.rules.budget import Limits, Model, Space, crossed, decide, describe
from ocrd.rules.decision import Verdict
from ocrd.rules.eviction import Inputs, over_plan
from ocrd.rules.retention import Rules, plan

MiB = 1 << 20
GiB = 1 << 30


def _f(name: str, size: int, ino: int, *, mtime: float = 0.0, dev: int = 1) -> FileEntry:
    return FileEntry(name.encode(), size, mtime, mtime, mtime, dev, ino, False)


def _m(
    name: str,
    size_mib: int,
    used: float,
    *,
    ino: int | None = None,
    engine: bool = False,
    protected: str | None = None,
    family: str | None = None,
    rank: int = 0,
    mtime: float = 0.0,
) -> Model:
    ino = ino if ino is not None else abs(hash(name)) % 10**9
    size = size_mib * MiB if size_mib else (ino % 7 + 1) * 5 * MiB  # 0: a size per inode
    entry = _f(name, size, ino, mtime=mtime)
    return Model(entry, used, engine_lists=engine, protected=protected, family=family, rank=rank)


def _names(budget: object) -> list[str]:
    return [f.path.decode() for e in budget.evictions for f in e.entries]  # type: ignore[attr-defined]


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("200 GiB", 200 * GiB),
        ("200GiB", 200 * GiB),
        ("1.5 GiB", 3 * GiB // 2),
        ("50 GB", 50 * 10**9),
        ("512 MiB", 512 * MiB),
        ("10 KiB", 10 * 1024),
        ("1 TiB", 1 << 40),
        ("2 TB", 2 * 10**12),
        ("4096 B", 4096),
        (" 7 mib ", 7 * MiB),
    ],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (200, "with a unit"),
        ("200", "unit"),
        ("200 G", "GiB"),
        ("200 gigs", "unit"),
        ("0 GiB", "more than 0"),
        ("-1 GiB", "unit"),
        ("10%", "a percentage"),
        ("99999999999 TiB", "too large"),
        (True, "with a unit"),
    ],
)
def test_sizes_refused_with_the_next_step(value: object, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_size(value)


def test_amounts_take_a_size_or_a_share() -> None:
    assert parse_amount("10%") == Amount(share=0.10)
    assert parse_amount("50 GiB") == Amount(size=50 * GiB)
    assert parse_amount("10%").of(1000) == 100
    assert parse_amount("50 GiB").of(1) == 50 * GiB
    for bad in ("0%", "100%", "150%", "ten percent"):
        with pytest.raises(ValueError, match="not"):
            parse_amount(bad)


def test_format_size() -> None:
    assert format_size(200 * GiB) == "200 GiB"
    assert format_size(1536 * MiB) == "1.5 GiB"
    assert format_size(12) == "12 B"


# -- the decision --------------------------------------------------------------------------------


SPACE = Space(total=1000 * MiB, free=500 * MiB)


def test_nothing_is_evicted_while_the_budget_holds() -> None:
    models = [_m("a", 10, used=1.0), _m("b", 10, used=2.0)]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=100 * MiB)))
    assert not budget.crossed
    assert budget.evictions == ()
    assert budget.unmet is None
    # ... but the order it would take them in is known
    assert [s.entry.path for s in budget.order] == [b"a", b"b"]


def test_least_recently_used_goes_first_whatever_the_mtime() -> None:
    models = [
        _m("old-but-used", 40, used=2000.0, mtime=1.0),
        _m("new-unused", 40, used=1000.0, mtime=1900.0),
        _m("middle", 40, used=1500.0, mtime=1000.0),
    ]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=60 * MiB)))
    assert budget.crossed
    # 120 MiB against 60 MiB with 5 % headroom: down to 57 MiB, so two go
    assert _names(budget) == ["new-unused", "middle"]
    assert budget.after_bytes == 40 * MiB
    one = decide(models, SPACE, Limits(max_size=Amount(size=100 * MiB)))
    assert _names(one) == ["new-unused"]


def test_headroom_stops_one_file_at_a_time() -> None:
    models = [_m(f"m{i}", 1, used=float(i)) for i in range(101)]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=100 * MiB)))
    # 101 MiB over 100 MiB: not one file but down to 95 MiB
    assert len(budget.evictions) == 6
    no_room = decide(
        models, SPACE, Limits(max_size=Amount(size=100 * MiB), headroom=Amount(size=0))
    )
    assert len(no_room.evictions) == 1


def test_min_free_as_share_and_size() -> None:
    models = [_m("a", 100, used=1.0), _m("b", 100, used=2.0), _m("c", 100, used=3.0)]
    tight = Space(total=1000 * MiB, free=50 * MiB)
    share = decide(models, tight, Limits(min_free=Amount(share=0.10)))
    # want 100 MiB free + 5 % of it: 55 MiB more, one 100 MiB file
    assert _names(share) == ["a"]
    assert share.after_free == 150 * MiB
    size = decide(models, tight, Limits(min_free=Amount(size=200 * MiB)))
    assert _names(size) == ["a", "b"]


def test_the_engine_lists_go_last() -> None:
    models = [
        _m("engine-old", 50, used=1.0, engine=True),
        _m("user-new", 50, used=9.0),
        _m("user-newer", 50, used=10.0),
    ]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=60 * MiB)))
    assert _names(budget) == ["user-new", "user-newer"]
    assert budget.order[-1].engine_lists


def test_each_inode_counts_once_and_its_links_go_together() -> None:
    a1 = _m("a", 60, used=1.0, ino=7)
    a2 = _m("links/a", 60, used=5.0, ino=7)
    b = _m("b", 60, used=2.0, ino=8)
    budget = decide([a1, a2, b], SPACE, Limits(max_size=Amount(size=100 * MiB)))
    assert budget.model_bytes == 120 * MiB
    # the inode's last use is its latest link's: b is older
    assert _names(budget) == ["b"]
    both = decide([a1, a2, b], SPACE, Limits(max_size=Amount(size=10 * MiB)), allow_delete_all=True)
    assert _names(both) == ["b", "a", "links/a"]  # both links of the inode, together


def test_a_protected_link_protects_its_inode() -> None:
    a1 = _m("a", 60, used=1.0, ino=7)
    a2 = _m("keep/a", 60, used=1.0, ino=7, protected="whitelist")
    b = _m("b", 60, used=2.0, ino=8)
    budget = decide([a1, a2, b], SPACE, Limits(max_size=Amount(size=100 * MiB)))
    assert _names(budget) == ["b"]


@pytest.mark.parametrize("why", ["whitelist", "settling", "in_use", "mount", "trash_hold"])
def test_protected_files_are_kept_and_named_when_unmet(why: str) -> None:
    models = [_m("p", 80, used=1.0, protected=why), _m("q", 30, used=2.0)]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=50 * MiB)))
    assert _names(budget) == ["q"]
    unmet = budget.unmet
    assert unmet is not None
    assert unmet.model_bytes == 80 * MiB
    assert unmet.max_size == 50 * MiB
    assert unmet.short == 30 * MiB
    assert unmet.blockers == {why: (1, 80 * MiB)}


def test_a_familys_last_version_stays() -> None:
    models = [
        _m("llama-v1", 40, used=1.0, family="llama", rank=1),
        _m("llama-v2", 40, used=2.0, family="llama", rank=0),
        _m("other", 40, used=3.0),
    ]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=10 * MiB)), keep_last_version=True)
    # the family's newest version stays, though it is used less recently than "other"
    assert _names(budget) == ["llama-v1", "other"]
    assert budget.unmet is not None
    assert budget.unmet.blockers == {"keep_last_version": (1, 40 * MiB)}
    assert describe(budget) == (
        "models 120 MiB of 10 MiB; short by 30 MiB; held: 1 keep_last_version (40 MiB)"
    )
    off = decide(models, SPACE, Limits(max_size=Amount(size=10 * MiB)), keep_last_version=False)
    # the refusal to delete every model keeps the most recently used one
    assert _names(off) == ["llama-v1", "llama-v2"]
    assert off.unmet is not None
    assert off.unmet.blockers == {"allow_delete_all": (1, 40 * MiB)}


def test_a_family_with_a_protected_version_may_lose_all_others() -> None:
    models = [
        _m("llama-v1", 40, used=1.0, family="llama", rank=1),
        _m("llama-v2", 40, used=2.0, family="llama", rank=0, protected="whitelist"),
        _m("other", 40, used=3.0),
    ]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=50 * MiB)), keep_last_version=True)
    assert _names(budget) == ["llama-v1", "other"]


def test_delete_all_allowed_takes_the_last_file_too() -> None:
    models = [_m("a", 40, used=1.0), _m("b", 40, used=2.0)]
    refused = decide(models, SPACE, Limits(max_size=Amount(size=1 * MiB)))
    assert _names(refused) == ["a"]
    allowed = decide(models, SPACE, Limits(max_size=Amount(size=1 * MiB)), allow_delete_all=True)
    assert _names(allowed) == ["a", "b"]
    assert allowed.unmet is None


def test_the_trash_is_emptied_first() -> None:
    models = [_m("a", 40, used=1.0), _m("b", 40, used=2.0)]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=100 * MiB)), trash_bytes=30 * MiB)
    # 80 + 30 = 110 MiB against 95 MiB: 15 MiB from the trash, no model
    assert budget.purge == 15 * MiB
    assert budget.evictions == ()
    more = decide(models, SPACE, Limits(max_size=Amount(size=60 * MiB)), trash_bytes=30 * MiB)
    assert more.purge == 30 * MiB
    assert _names(more) == ["a"]


def test_the_explanation_covers_every_model() -> None:
    models = [
        _m("p", 10, used=1.0, protected="whitelist"),
        _m("a", 10, used=2.0),
        _m("e", 10, used=0.5, engine=True),
    ]
    budget = decide(models, SPACE, Limits(max_size=Amount(size=15 * MiB)))
    why = {line.entry.path: line for line in budget.lines()}
    assert set(why) == {b"p", b"a", b"e"}
    assert why[b"p"].position is None
    assert "whitelist" in why[b"p"].why
    assert why[b"a"].position == 1
    assert why[b"a"].taken
    assert why[b"e"].position == 2
    assert "engine" in why[b"e"].why


# -- properties ----------------------------------------------------------------------------------

model_lists = st.lists(
    st.builds(
        _m,
        name=st.text("abcdef", min_size=1, max_size=4),
        size_mib=st.just(0),
        used=st.floats(0, 1e6, allow_nan=False),
        ino=st.integers(1, 12),
        engine=st.booleans(),
        protected=st.sampled_from([None, None, None, "whitelist", "in_use"]),
        family=st.sampled_from([None, "x", "y"]),
        rank=st.integers(0, 3),
    ),
    max_size=12,
    unique_by=lambda m: m.entry.path,
)


@settings(max_examples=300, deadline=None)
@given(
    models=model_lists,
    max_mib=st.integers(1, 400),
    free_mib=st.integers(0, 1000),
    keep_last=st.booleans(),
    allow_all=st.booleans(),
)
def test_properties(
    models: list[Model], max_mib: int, free_mib: int, keep_last: bool, allow_all: bool
) -> None:
    space = Space(total=1000 * MiB, free=free_mib * MiB)
    limits = Limits(max_size=Amount(size=max_mib * MiB), min_free=Amount(share=0.2))
    budget = decide(models, space, limits, keep_last_version=keep_last, allow_delete_all=allow_all)
    gone = {f.path for e in budget.evictions for f in e.entries}
    by_ino: dict[int, list[Model]] = {}
    for m in models:
        by_ino.setdefault(m.entry.ino, []).append(m)
    for links in by_ino.values():
        paths = {m.entry.path for m in links}
        # an inode goes whole or not at all, and never if any link of it is protected
        assert paths <= gone or not paths & gone
        if any(m.protected for m in links):
            assert not paths & gone
    # each inode once
    assert budget.model_bytes == sum(links[0].entry.size for links in by_ino.values())
    assert budget.crossed == crossed(budget.model_bytes, space, limits)
    if not budget.crossed:
        assert not gone
    # never every model file unless allowed
    if not allow_all and models:
        assert len(gone) < len(models)
        assert budget.remaining_files >= 1
    # evictions come in the order: the engine's files last, then least recently used first
    keys = [(e.engine_lists, e.last_used) for e in budget.evictions]
    assert keys == sorted(keys)
    # the budget holds after the pass, or it says why not
    if budget.crossed and budget.unmet is None:
        assert budget.after_bytes <= max_mib * MiB
        assert budget.after_free >= 200 * MiB


# -- the budget over a retention plan ------------------------------------------------------------


def _rules(**retention: object) -> Rules:
    return Rules.from_config(Retention.model_validate(retention), settle=60.0)


NOW = 1_700_000_000.0


def _file(name: str, size_mib: int, ino: int, *, age: float = 86_400.0) -> FileEntry:
    t = NOW - age
    return FileEntry(name.encode(), size_mib * MiB, t, t, t, 1, ino, False)


def test_over_a_plan_the_budget_says_rule_budget_and_keeps_what_rules_protect() -> None:
    files = [
        _file("a.gguf", 40, 1),
        _file("b.gguf", 40, 2),
        _file("keep.gguf", 40, 3),
        _file("fresh.gguf", 40, 4, age=10.0),  # settling
        _file("old_c.gguf", 40, 5),  # the prefix rule deletes it: it frees its bytes already
    ]
    rules = _rules(prefixes=["old_"], whitelist=["keep.gguf"])
    used = {b"a.gguf": NOW - 10, b"b.gguf": NOW - 1000}
    inputs = Inputs(
        Limits(max_size=Amount(size=130 * MiB)),
        Space(total=1000 * MiB, free=500 * MiB),
        last_used=lambda e: used.get(e.path),
    )
    the_plan, budget = over_plan(plan(files, rules, NOW), rules, inputs)
    verdicts = {d.entry.path: (d.verdict, d.rule) for d in the_plan.decisions}
    assert verdicts[b"old_c.gguf"] == (Verdict.DELETE, "prefix")
    assert verdicts[b"b.gguf"] == (Verdict.DELETE, "budget")  # used longest ago
    assert verdicts[b"a.gguf"] == (Verdict.KEEP, None)
    assert verdicts[b"keep.gguf"] == (Verdict.PROTECTED, "whitelist")
    assert verdicts[b"fresh.gguf"][0] is Verdict.SETTLING
    # 160 MiB stay after the prefix rule; down to 123.5 MiB: one 40 MiB file
    assert budget.model_bytes == 160 * MiB
    assert len(budget.evictions) == 1
    reason = next(d.reason for d in the_plan.decisions if d.rule == "budget")
    assert "last used" in reason


def test_over_a_plan_in_use_and_engine_files() -> None:
    files = [_file("a.gguf", 40, 1), _file("b.gguf", 40, 2), _file("c.gguf", 40, 3)]
    rules = _rules()
    inputs = Inputs(
        Limits(max_size=Amount(size=30 * MiB)),
        Space(total=1000 * MiB, free=500 * MiB),
        last_used=lambda e: None,  # arrival for all: a, b, c arrived at the same time
        engine_lists=frozenset({b"a.gguf"}),
        in_use=frozenset({(1, 2)}),
    )
    the_plan, budget = over_plan(plan(files, rules, NOW), rules, inputs)
    assert {d.entry.path for d in the_plan.deletions} == {b"a.gguf", b"c.gguf"}
    # b in use; a the engine lists: last
    assert [s.entry.path for s in budget.evictions] == [b"c.gguf", b"a.gguf"]
    assert budget.unmet is not None
    assert budget.unmet.blockers == {"in_use": (1, 40 * MiB)}


def test_over_a_plan_keeps_a_familys_last_version() -> None:
    files = [_file("llama-v1.gguf", 40, 1), _file("llama-v2.gguf", 40, 2)]
    rules = _rules(keep_newest=5)
    inputs = Inputs(
        Limits(max_size=Amount(size=10 * MiB)),
        Space(total=1000 * MiB, free=500 * MiB),
        last_used=lambda e: NOW - 100 if e.path == b"llama-v1.gguf" else NOW - 5000,
    )
    the_plan, budget = over_plan(plan(files, rules, NOW), rules, inputs)
    # v2 is the newest version: it stays, though used longer ago
    assert [d.entry.path for d in the_plan.deletions] == [b"llama-v1.gguf"]
    assert budget.unmet is not None


# -- the config keys -----------------------------------------------------------------------------


def test_budget_and_state_keys_load_and_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    config = validate(
        {
            "model_dir": "models",
            "budget": {"max_size": "200 GiB", "min_free": "10%", "headroom": "0 B"},
            "state": {"path": "state/state.db"},
        },
        tmp_path / "config.toml",
    )
    assert config.budget.max_size == Amount(size=200 * GiB)
    assert config.budget.min_free == Amount(share=0.10)
    assert config.budget.headroom == Amount(size=0)
    assert config.state.path == tmp_path / "state" / "state.db"
    with pytest.raises(ConfigError) as exc:
        validate(
            {
                "model_dir": "models",
                "budget": {"max_size": "10%", "min_free": "lots", "extra": 1},
                "state": {"path": "models/state.db"},
            },
            tmp_path / "config.toml",
        )
    text = str(exc.value)
    assert "at 'budget.max_size': \"10%\" is a percentage" in text
    assert "at 'budget.min_free': \"lots\" is not an amount" in text
    assert "at 'budget.extra': unknown key" in text
    assert "at 'state.path': \"models/state.db\" is inside model_dir" in text


def test_the_contracts_example_config_loads(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "docs" / "contract.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "models").mkdir()
    config = validate(tomllib.loads(example), tmp_path / "config.toml")
    assert config.budget.active


def test_the_metrics_carry_the_budget() -> None:
    totals = Totals()
    totals.deleted(3 * MiB, "budget")
    totals.budget_seen(
        BudgetNumbers(max_size=10 * MiB, min_free=None, model_bytes=12 * MiB, free=5, short=MiB)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TotalsCollector(totals))
    text = generate_latest(registry).decode()
    assert "ocrd_budget_bytes 1.048576e+07" in text
    assert "ocrd_budget_model_bytes 1.2582912e+07" in text
    assert "ocrd_free_bytes 5.0" in text
    assert "ocrd_evictions_total 1.0" in text
    assert "ocrd_budget_unmet 1.0" in text
