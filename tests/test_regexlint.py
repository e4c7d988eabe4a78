"""ocrd/config/regexlint.py: family patterns that could make matching a hostile name take seconds
are refused by ``ocrd check`` (and at start and reload); the shapes users write pass; and a
path too long to be a model's is never matched."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocrd.config.regexlint import backtracking
from ocrd.rules.families import DEFAULT_TRUST, MAX_MATCH_BYTES, Families
from tests.conftest import OcrdRunner, write_config
from tests.test_retention import NOW, entry

ISSUE = r"^(?P<family>(\w+-?)+)-v(?P<version>\d+)\.gguf$"


@pytest.mark.parametrize(
    "pattern",
    [
        ISSUE,
        r"(?P<family>(a+)+)",
        r"(?P<family>(a|a)*)",
        r"(?P<family>(?:[^/]+/)*x)",
        r"(?P<family>(ab?){2,})",
        r"(?P<family>\w+\w+\w+x)",  # no group repeated, yet O(n^4): 1.4 s at 255 bytes
        r"(?P<family>.*)-(?P<version>.*)-v",  # unanchored, "-" slides: 3.7 s at 1 KiB
        r"(?P<family>\w+)-?\w+",
        r"(?P<family>a)(?P=family)",
        r"(?P<family>(a)\1)",
        r"(?x) (?P<family> a+ )",
    ],
)
def test_shapes_that_can_backtrack_without_end_are_refused(pattern: str) -> None:
    assert backtracking(pattern) is not None, pattern


@pytest.mark.parametrize(
    "pattern",
    [
        r"^(?P<family>.+)-v(?P<version>\d+)\.gguf$",  # the README's example
        r"^(?P<family>[\w-]+)-v(?P<version>\d+)\.gguf$",  # the issue's, with one class
        r"(?P<family>[a-z]+)-\d+b-",
        r"(?P<family>m)-v?\d",
        r"^(?P<family>[^/]*)/",
        r"^(?:.*/)?(?P<family>[a-z]+)-\d+b-",
        r"(?P<family>llama-3b-q4)-v(?P<version>\d{1,4})\.gguf",
        r"^(?P<family>(?:ab){2})[.]x{2,3}\Z",
        r"(?i)^(?P<family>[a-z]+)_(?:q4|q8)_v(?P<version>\d+)",
    ],
)
def test_shapes_users_write_pass(pattern: str) -> None:
    assert backtracking(pattern) is None, pattern


def test_check_refuses_the_pattern_and_says_what_to_write(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    (tmp_path / "models").mkdir()
    body = "model_dir = \"models\"\n[retention]\nkeep_newest = 1\nfamily = '{}'\n"
    result = run_ocrd("check", "-c", write_config(tmp_path, body.format(ISSUE)))
    assert result.returncode == 78
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{tmp_path / 'config.toml'}: at 'retention.family': ")
    assert "nested" in line
    assert "[\\w-]+" in line  # what to write instead
    near_miss = r"^(?P<family>[\w-]+)-v(?P<version>\d+)\.gguf$"
    result = run_ocrd("check", "-c", write_config(tmp_path, body.format(near_miss)))
    assert result.returncode == 0, result.stderr


def test_a_path_longer_than_any_models_is_not_matched() -> None:
    """Quadratic shapes pass the check (an unanchored search is one); what bounds them is
    the text: no path longer than MAX_MATCH_BYTES is matched, and it is in no family."""
    families = Families(re.compile(r"(?P<family>[\w.]+)-v(?P<version>\d+)"))
    long = [entry(b"a" * 4096 + b"%d" % i) for i in range(40)]
    short = entry(b"m" * (MAX_MATCH_BYTES - 10) + b"-v1")
    started = time.perf_counter()
    ranking = families.rank([*long, short], DEFAULT_TRUST, NOW)
    elapsed = time.perf_counter() - started
    assert all(ranking.get(id(f)) is None for f in long)
    assert ranking.get(id(short)) is not None
    assert elapsed < 1.0  # 40 such paths took 10 s when every path was searched


_PIECES = st.sampled_from(
    ["a", "\\w", "\\d", ".", "[^/]", "[a-z-]", "-", "/", "(", ")", "(?:", "(?P<family>", "|", "*",
     "+", "?", "{2}", "{1,3}", "{2,}", "^", "$", "\\b", "(?=", "(?i)", "\\.", "[]x]", "\\x41"]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=12).map("".join))
@settings(max_examples=500)
def test_any_pattern_that_compiles_gets_an_answer(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error:
        return
    answer = backtracking(pattern)
    assert answer is None or isinstance(answer, str)


@given(st.lists(_PIECES, max_size=10).map("".join))
@settings(max_examples=300, deadline=None)
def test_what_passes_matches_hostile_text_quickly(pattern: str) -> None:
    """Against the re engine itself: a pattern that passes never takes long on texts made
    of its own pieces (1 KiB of one or two characters, as an attacker would choose)."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        return
    if backtracking(pattern) is not None:
        return
    for text in ("a" * 1024, "-a" * 512, "/" * 1024, "a1" * 512, "-v" * 512, "ab" * 512):
        started = time.perf_counter()
        compiled.search(text + "!")
        assert time.perf_counter() - started < 0.5, (pattern, text[:4])
