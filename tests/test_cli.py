import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "tinyinterp.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def test_exercises_json_lists_every_field():
    p = run("exercises", "--json")
    assert p.returncode == 0
    data = json.loads(p.stdout)
    ids = [d["id"] for d in data]
    assert "attention_pattern" in ids and len(ids) == len(set(ids))
    for d in data:
        for key in ("id", "chapter", "title", "points", "difficulty", "importance", "minutes", "signature", "mistakes"):
            assert key in d
    ap = next(d for d in data if d["id"] == "attention_pattern")
    assert ap["signature"] == "attention_pattern(q, k)"


@pytest.mark.parametrize("sub", [[], ["exercises"], ["release"]])
def test_help_on_every_subcommand(sub):
    p = run(*sub, "--help")
    assert p.returncode == 0 and "usage:" in p.stdout


@pytest.mark.parametrize("args", [["frobnicate"], ["exercises", "--bogus"], []])
def test_misuse_is_one_line_and_exit_2(args):
    p = run(*args)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "error" in p.stderr


def test_release_outside_a_book_is_exit_2(tmp_path):
    p = subprocess.run([*CLI, "release", "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "no book root" in p.stderr
