"""ocrd/config/text.py: how a config problem shows a key and a value, escaped, never raw."""

from __future__ import annotations

from ocrd.config.text import key_path, plain, quote, show


def test_a_value_is_quoted_as_toml_writes_it() -> None:
    assert quote("30d") == '"30d"'
    assert quote('say "hi"') == '"say \\"hi\\""'


def test_unprintable_characters_are_escaped_not_shown() -> None:
    # A bidi override and a line separator would reorder or break the line a reader sees.
    assert quote("a\u202eb\u2028c") == '"a\\u202eb\\u2028c"'
    assert quote("\U000e0001") == '"\\U000e0001"'


def test_a_long_value_is_shortened_and_still_quoted() -> None:
    shown = quote("x" * 200, limit=20)
    assert len(shown) == 20
    assert shown.endswith('…"')


def test_a_key_path_quotes_only_keys_that_are_not_bare() -> None:
    assert key_path(("retention", "whitelist", 0)) == "retention.whitelist[0]"
    assert key_path(("bogus", "a\nb")) == 'bogus."a\\nb"'


def test_a_plain_path_is_left_as_it_is_unless_unprintable() -> None:
    assert plain("/srv/models") == "/srv/models"
    assert plain("/srv/\x1bmodels") == '"/srv/\\u001bmodels"'


def test_show_names_a_table_or_an_array_and_quotes_strings() -> None:
    assert (show({"a": 1}), show([1]), show(3), show("s")) == ("a table", "an array", "3", '"s"')
