import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "tinyinterp.cli"]
ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("sub", ["check", "grade"])
def test_help_documents_the_exit_statuses(sub):
    p = run(sub, "--help")
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and "exit status: 0" in text and "2 misuse" in text and "3 " in text
    assert "`error`" in text


CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("slug", CHAPTERS)
@pytest.mark.parametrize("name", ["{}.ipynb", "Copy of {}.ipynb", "{} (1).ipynb", "Copy of {} (2).ipynb",
                                  "{} - Copy.ipynb", "dana_12_34_{}.ipynb", "{}.IPYNB"])
def test_chapter_from_a_decorated_file_name(slug, name):
    from tinyinterp.grading.assignment import chapter_of, known_chapters

    assert chapter_of(Path(name.format(slug)), {}, known_chapters()) == slug


@pytest.mark.parametrize("slug", CHAPTERS)
def test_chapter_from_metadata_wins_over_the_name(slug):
    from tinyinterp.grading.assignment import chapter_of, known_chapters

    exercise = json.loads((ROOT / "exercises" / f"{slug}.ipynb").read_text())
    assert exercise["metadata"]["tinyinterp"] == {"chapter": slug}
    other = next(c for c in CHAPTERS if c != slug)
    assert chapter_of(Path(f"Copy of {other}.ipynb"), exercise, known_chapters()) == slug
    assert chapter_of(Path("my homework.ipynb"), exercise, known_chapters()) == slug


def test_installed_grading_data_knows_every_chapter():
    from tinyinterp.grading.assignment import known_chapters

    assert known_chapters() == CHAPTERS


@pytest.mark.parametrize("args", [["check", "untitled.ipynb"], ["check", "untitled.ipynb", "--assignment", "99_nope"],
                                  ["check", "Copy of 02_attention.ipynb", "--assignment", "99_nope"]])
def test_check_cannot_tell_the_chapter_is_one_line_and_exit_2(tmp_path, args):
    (tmp_path / args[1]).write_text(json.dumps({"cells": [], "metadata": {}}))
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "01_tokens_and_embeddings" in p.stderr  # lists the chapters
