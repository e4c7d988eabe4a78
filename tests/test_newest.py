"""keep_newest, the last-version floor and the refusal to delete every model file, end to end:
real files under tmp_path, the real ``ocrd list``/``ocrd clean`` commands and ``ocrd run`` as a
subprocess, showing the events and that nothing else is deleted."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import configs
from tests.conftest import OcrdRunner, StartOcrd, make_file, snapshot
from tests.worlds import World, as_user, make_world, root_only

DAY = 86400


def config(tmp_path: Path, retention: str, *, settle: str = "0s", rescan: str = "10m") -> Path:
    """The [retention] table given as TOML text (no prefix rule unless it names one)."""
    return configs.config(
        tmp_path,
        retention={"prefixes": None, **tomllib.loads(retention)},
        watch={"settle": settle, "rescan": rescan},
    )


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{") and (e := json.loads(line)).get("event") == name:
            found.append(e)
    return found


VERSIONS = {
    b"llama-3.2-3b-q4-v3.gguf": 3 * DAY,
    b"llama-3.2-3b-q4-v4.gguf": 1 * DAY,  # newer version, older than v10 on disk
    b"llama-3.2-3b-q4-v10.gguf": 2 * DAY,
    b"snap-2026-01/model.gguf": 0,
    b"snap-2026-02/model.gguf": 0,
    b"snap-2026-02/tokenizer.json": 0,
    b"en_ocr_v1.bin": 9 * DAY,
    b"en_ocr_v2.bin": 8 * DAY,
    b"notes.txt": 0,
}


def versions(models: Path) -> None:
    for rel, age in VERSIONS.items():
        make_file(models, rel, rel, age_s=age)
    os.symlink("llama-3.2-3b-q4-v10.gguf", models / "current-v99.gguf")


def test_list_shows_family_and_rank_and_clean_deletes_exactly_the_older_versions(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    models = tmp_path / "models"
    versions(models)
    path = config(tmp_path, 'keep_newest = 1\nwhitelist = ["en_ocr_v1.bin"]\n')
    listed = run_ocrd("list", "--json", "-c", path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["path"]: r for r in json.loads(listed.stdout)}
    got = {p: (r["family"], r["rank"], r["verdict"], r["rule"]) for p, r in rows.items()}
    llama = "llama-#.#-#b-q#-v#.gguf"
    assert got == {
        "llama-3.2-3b-q4-v10.gguf": (llama, 1, "keep", None),
        "llama-3.2-3b-q4-v4.gguf": (llama, 2, "delete", "keep_newest"),
        "llama-3.2-3b-q4-v3.gguf": (llama, 3, "delete", "keep_newest"),
        "snap-2026-02/model.gguf": ("snap-#-#/model.gguf", 1, "keep", None),
        "snap-2026-01/model.gguf": ("snap-#-#/model.gguf", 2, "delete", "keep_newest"),
        "snap-2026-02/tokenizer.json": ("snap-#-#/tokenizer.json", 1, "keep", None),
        # the whitelisted older version keeps its rank and its file; the newer one stays too
        "en_ocr_v2.bin": ("en_ocr_v#.bin", 1, "keep", None),
        "en_ocr_v1.bin": ("en_ocr_v#.bin", 2, "protected", "whitelist"),
        "notes.txt": ("notes.txt", 1, "keep", None),
        "current-v99.gguf": (None, None, "keep", None),  # a symlink is no version
    }
    assert rows["llama-3.2-3b-q4-v4.gguf"]["reason"] == (
        f"version 2 of family '{llama}', keep_newest is 1"
    )
    text = run_ocrd("list", "-c", path)
    assert text.stdout.splitlines()[0].split() == [
        "VERDICT", "SIZE", "AGE", "RULE", "RANK", "PATH", "(REASON)", "FAMILY"
    ]  # fmt: skip
    line = next(x for x in text.stdout.splitlines() if "snap-2026-01/model.gguf" in x)
    assert "keep_newest     2  snap-2026-01/model.gguf  (version 2 of family " in line
    assert line.endswith("  snap-#-#/model.gguf")

    before = snapshot(models)
    cleaned = run_ocrd("clean", "--json", "-c", path)
    assert cleaned.returncode == 0, cleaned.stderr
    result = json.loads(cleaned.stdout)
    gone = {"llama-3.2-3b-q4-v4.gguf", "llama-3.2-3b-q4-v3.gguf", "snap-2026-01/model.gguf"}
    assert set(result["deleted"]) == gone
    assert result["refused"] is None
    after = snapshot(models)
    # Nothing else changed (file and link, inode and bytes); the emptied snapshot directory
    # went with its file.
    files = {p: v for p, v in before.items() if v[0] != "dir" and os.fsdecode(p) not in gone}
    assert {p: v for p, v in after.items() if v[0] != "dir"} == files
    assert {p for p, v in after.items() if v[0] == "dir"} == {b".", b"snap-2026-02"}
    again = run_ocrd("clean", "--json", "-c", path)
    assert json.loads(again.stdout)["deleted"] == []


def test_without_families_list_has_its_old_columns(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    versions(tmp_path / "models")
    path = config(tmp_path, 'prefixes = ["old_"]\n')
    text = run_ocrd("list", "-c", path)
    assert text.stdout.splitlines()[0].split() == [
        "VERDICT", "SIZE", "AGE", "RULE", "PATH", "(REASON)"
    ]  # fmt: skip
    rows = json.loads(run_ocrd("list", "--json", "-c", path).stdout)
    assert {(r["family"], r["rank"]) for r in rows} == {(None, None)}


def test_the_floor_keeps_a_familys_last_version_from_max_age(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    models = tmp_path / "models"
    make_file(models, b"m-v1.bin", b"1", age_s=50 * DAY)
    make_file(models, b"m-v2.bin", b"2", age_s=40 * DAY)
    make_file(models, b"fresh.bin", b"f")
    floor = 'max_age = "30d"\nage_from = "timestamp"\nfamily = \'^(?P<family>m)-v\'\n'
    cleaned = run_ocrd("clean", "--json", "-c", config(tmp_path, floor))
    assert json.loads(cleaned.stdout)["deleted"] == ["m-v1.bin"]
    assert sorted(os.listdir(models)) == ["fresh.bin", "m-v2.bin"]
    listed = run_ocrd("list", "--json", "-c", tmp_path / "config.toml")
    rows = {r["path"]: r for r in json.loads(listed.stdout)}
    assert (rows["m-v2.bin"]["verdict"], rows["m-v2.bin"]["rule"]) == ("keep", "keep_last_version")
    assert rows["fresh.bin"]["family"] is None  # the pattern does not match it
    # Allowed: max_age acts alone again.
    allowed = floor + "keep_last_version = false\n"
    cleaned = run_ocrd("clean", "--json", "-c", config(tmp_path, allowed))
    assert json.loads(cleaned.stdout)["deleted"] == ["m-v2.bin"]


AGED = 'max_age = "1d"\nage_from = "timestamp"\n'


def test_clean_refuses_to_delete_every_model_file(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    models = tmp_path / "models"
    make_file(models, b"a.bin", b"aaaa", age_s=2 * DAY)
    make_file(models, b"sub/b.bin", b"bb", age_s=3 * DAY)
    os.symlink("a.bin", models / "link")  # a symlink is no model: it does not count
    path = config(tmp_path, AGED)
    before = snapshot(models)
    for args in (["--json"], ["--json", "--dry-run"]):
        cleaned = run_ocrd("clean", *args, "-c", path)
        assert cleaned.returncode == 0, cleaned.stderr
        result = json.loads(cleaned.stdout)
        assert result["deleted"] == []
        assert result["refused"]["reason"] == "every_model_file"
        (event,) = events(cleaned.stderr, "deletion_refused")
        assert event["level"] == "warning"
        assert (event["would_delete"], event["would_free"], event["of_files"]) == (2, 6, 2)
        assert "allow_delete_all" in event["action"]
        assert snapshot(models) == before
    text = run_ocrd("clean", "-c", path)
    assert "refused: the plan would leave no model file under model_dir that counts for 2 " in (
        text.stdout
    )
    rows = json.loads(run_ocrd("list", "--json", "-c", path).stdout)
    assert {(r["verdict"], r["rule"]) for r in rows if not r["symlink"]} == {
        ("keep", "allow_delete_all")
    }
    # A file named for deletion still goes; the aged ones stay, since they would be the last.
    make_file(models, b"old_c.bin", b"c")
    named = config(tmp_path, AGED + 'prefixes = ["old_"]\n')
    result = json.loads(run_ocrd("clean", "--json", "-c", named).stdout)
    assert result["deleted"] == ["old_c.bin"]
    assert result["refused"]["would_delete"] == 2
    allowed = config(tmp_path, AGED + "allow_delete_all = true\n")
    result = json.loads(run_ocrd("clean", "--json", "-c", allowed).stdout)
    assert sorted(result["deleted"]) == ["a.bin", "sub/b.bin"]
    assert os.listdir(models) == ["link"]


# --- ocrd run ---------------------------------------------------------------------------------


def test_the_daemon_keeps_the_newest_version_as_versions_arrive(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    make_file(models, b"m-v1.bin", b"one", age_s=DAY)
    make_file(models, b"other-v7.bin", b"other")
    d = start_ocrd(config(tmp_path, "keep_newest = 1\n", settle="1s"), ready=True)
    assert d.deletions() == 0
    # v2 arrives: once it has settled it counts as the newer version (ocrd.rules.trust), and v1
    # goes, by keep_newest, and nothing else does.
    make_file(models, b"m-v2.bin", b"two")
    deleted = d.event("model_deleted", path="m-v1.bin")
    assert (deleted["rule"], deleted["size"]) == ("keep_newest", 3)
    make_file(models, b"m-v3.bin", b"three")
    d.event("model_deleted", path="m-v2.bin")
    assert d.stop()[0] == 0
    assert sorted(os.listdir(models)) == ["m-v3.bin", "other-v7.bin"]
    assert [e["path"] for e in d.events if e["event"] == "model_deleted"] == [
        "m-v1.bin",
        "m-v2.bin",
    ]


def test_the_daemon_refuses_to_delete_every_model_file_batch_or_not(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """At start (a full pass) and for one file planned alone (the daemon plans what changed):
    each is weighed against every model file under model_dir."""
    make_file(models, b"a.bin", b"aa", age_s=2 * DAY)
    make_file(models, b"b.bin", b"bb", age_s=2 * DAY)
    d = start_ocrd(config(tmp_path, AGED, rescan="1s"), ready=True)
    refused = d.event("deletion_refused")
    assert (refused["would_delete"], refused["of_files"], refused["level"]) == (2, 2, "warning")
    assert d.deletions() == 0
    # A model arrives: the old ones are no longer every model file, and go (at the next
    # rescan at the latest).
    make_file(models, b"fresh.bin", b"f")
    d.event("model_deleted", path="a.bin")
    d.event("model_deleted", path="b.bin")
    # Planned alone, one new aged file would be every model file once fresh.bin is gone.
    os.unlink(models / "fresh.bin")
    d.wait_for(
        "fresh.bin forgotten", lambda: any(n.startswith("STATUS=0 files") for _, n in d.notes)
    )
    make_file(models, b"c.bin", b"c", age_s=2 * DAY)
    refused = d.event("deletion_refused", would_delete=1)
    assert refused["of_files"] == 1
    assert d.stop()[0] == 0
    assert os.listdir(models) == ["c.bin"]
    assert d.deletions() == 2


# --- config: validation and lint ---------------------------------------------------------------


def check(tmp_path: Path, run_ocrd: OcrdRunner, retention: str) -> tuple[int, list[str], str]:
    (tmp_path / "models").mkdir(exist_ok=True)
    result = run_ocrd("check", "-c", config(tmp_path, retention))
    return result.returncode, result.stderr.splitlines(), result.stdout


def test_bad_values_of_the_new_keys_are_each_reported_with_their_key(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    code, lines, _ = check(
        tmp_path,
        run_ocrd,
        "keep_newest = -1\nfamily = '(?P<family>a'\nkeep_last_version = 1\n"
        'allow_delete_all = "yes"\n',
    )
    assert code == 78
    where = f"{tmp_path / 'config.toml'}: at 'retention."
    assert lines == [
        f"{where}keep_newest': -1 is negative: write the number of versions to keep, 0 = off",
        f'{where}family\': "(?P<family>a" is not a regular expression: missing ), '
        "unterminated subpattern at position 0",
        f"{where}keep_last_version': 1: input should be a valid boolean",
        f'{where}allow_delete_all\': "yes": input should be a valid boolean',
    ]
    code, lines, _ = check(tmp_path, run_ocrd, "keep_newest = 10000000\nfamily = 'v(\\d+)'\n")
    assert code == 78
    assert lines[0].startswith(f"{where}keep_newest': 10000000 is more versions than any family")
    assert lines[1] == (
        f'{where}family\': "v(\\\\d+)" has no group named family: write the part that names '
        "the family as (?P<family>...), e.g. '^(?P<family>.+)-v\\d+\\.gguf$'"
    )
    code, lines, _ = check(tmp_path, run_ocrd, "keep_newest = 1.5\nfamily = ''\n")
    assert code == 78
    assert len(lines) == 2
    code, lines, _ = check(
        tmp_path, run_ocrd, 'trusted_owners = ["root", 4343, "no-such-user-ocrd", -1, 1.5]\n'
    )
    assert code == 78
    assert lines == [
        f'{where}trusted_owners[2]\': "no-such-user-ocrd" is no user on this host: write an '
        "existing user name (getent passwd) or a numeric uid",
        f"{where}trusted_owners[3]': -1 is not a uid: between 0 and 4294967294",
        f"{where}trusted_owners[4]': 1.5 is not a user: write a user name or a numeric uid",
    ]
    code, lines, _ = check(tmp_path, run_ocrd, 'trusted_owners = ["root", 4343]\n')
    assert code == 0, lines


def test_rules_that_cannot_mean_what_they_say_are_warned_about(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    code, lines, out = check(tmp_path, run_ocrd, "keep_newest = 5000\nkeep_last_version = false\n")
    assert code == 0
    assert "keep_newest=5000" in out
    assert any("'retention.keep_newest': 5000 keeps more versions" in x for x in lines)
    code, lines, _ = check(
        tmp_path, run_ocrd, "family = '(?P<family>x)'\nkeep_last_version = false\n"
    )
    assert code == 0
    assert any("'retention.family': has no effect" in x for x in lines)


def test_the_documented_family_example_loads_and_groups_as_it_says(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "families.md").read_text()
    example = next(x for x in doc.splitlines() if x.startswith("family = '"))
    models = tmp_path / "models"
    for name in ("llama-3b-v7.gguf", "llama-3b-v8.gguf", "llama-8b-v2.gguf"):
        make_file(models, name.encode())
    listed = run_ocrd("list", "--json", "-c", config(tmp_path, f"keep_newest = 1\n{example}\n"))
    assert listed.returncode == 0, listed.stderr
    got = {r["path"]: (r["family"], r["rank"], r["verdict"]) for r in json.loads(listed.stdout)}
    assert got == {
        "llama-3b-v8.gguf": ("llama-3b", 1, "keep"),
        "llama-3b-v7.gguf": ("llama-3b", 2, "delete"),
        "llama-8b-v2.gguf": ("llama-8b", 1, "keep"),
    }


# --- who may steer a deletion ----------------------------------------------------------------

VICTIM_UID, STRANGER_UID = 4343, 4444
VICTIM = ("llama-3b-q4-v2.gguf", "llama-3b-q4-v3.gguf")
PLANTED = ("llama-3b-q4-v98.gguf", "llama-3b-q4-v99.gguf")


@pytest.fixture
def shared() -> Iterator[World]:
    """A sticky, world-writable model_dir (mode 1777, as /tmp): every user may add files,
    none may delete another's. The victim's two versions are in it, a day old."""
    with make_world() as w:
        w.models.chmod(0o1777)
        for name in VICTIM:
            path = w.model(name, owner=VICTIM_UID)
            os.utime(path, (time.time() - DAY, time.time() - DAY))
        yield w


def plant(world: World, *names: str) -> None:
    """A stranger, who cannot delete the victim's files, touches newer-looking versions."""
    argv = [*as_user(STRANGER_UID), "touch", *(str(world.models / n) for n in names)]
    subprocess.run(argv, check=True, env=world.env)
    for n in names:
        assert (world.models / n).stat().st_uid == STRANGER_UID


def shared_config(world: World, rescan: str = "10m") -> Path:
    path = config(world.base, "keep_newest = 2\nallow_delete_all = false\n", rescan=rescan)
    path.chmod(0o644)
    return path


@root_only
def test_a_strangers_newer_looking_files_do_not_make_clean_delete_anothers_versions(
    shared: World, run_ocrd: OcrdRunner
) -> None:
    plant(shared, *PLANTED)
    path = shared_config(shared)
    cleaned = run_ocrd("clean", "--json", "-c", path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["deleted"] == []
    assert sorted(os.listdir(shared.models)) == sorted([*VICTIM, *PLANTED])
    rows = {r["path"]: r for r in json.loads(run_ocrd("list", "--json", "-c", path).stdout)}
    v3 = rows["llama-3b-q4-v3.gguf"]
    assert (v3["verdict"], v3["rank"], v3["owner"]) == ("keep", 1, VICTIM_UID)
    assert f"owner uid {STRANGER_UID}" in v3["rank_reason"]
    assert (rows["llama-3b-q4-v2.gguf"]["verdict"], rows["llama-3b-q4-v2.gguf"]["rank"]) == (
        "keep",
        2,
    )
    text = run_ocrd("list", "-c", path).stdout
    line = next(x for x in text.splitlines() if "llama-3b-q4-v3.gguf" in x)
    assert f"untrusted: owner uid {STRANGER_UID}" in line


@root_only
def test_a_strangers_newer_looking_files_do_not_make_the_daemon_delete_anothers_versions(
    shared: World, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(shared_config(shared, rescan="1s"), ready=True)
    plant(shared, *PLANTED)
    # Two full rescans after the planted files are there: the first plans them (and, were
    # they trusted, deletes); the second sees what is left.
    seen = len(d.events)
    d.wait_for(
        "two rescans after the planted files",
        lambda: len([e for e in d.events[seen:] if e.get("trigger") == "rescan"]) >= 2,
    )
    assert d.stop()[0] == 0
    assert d.deletions() == 0
    assert sorted(os.listdir(shared.models)) == sorted([*VICTIM, *PLANTED])
