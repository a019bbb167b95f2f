"""Read a submitted notebook defensively: its size is capped before parsing, and everything grading
uses of it (its code cells and their sources) is checked, so a file that is not a usable notebook
raises :class:`NotebookError` with a one-line reason (status ``unreadable``), never anything else."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 2**20  # a Colab notebook with outputs is a few MB; clear outputs if over


class NotebookError(Exception):
    """Not a notebook grading can use; the message says why, in one line."""


def read_bytes(path: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The file's bytes, opened without following a symlink, only if it is a regular file of at most
    ``limit`` bytes (checked before reading)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise NotebookError(f"cannot open the file ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotebookError("not a regular file")
        if st.st_size > limit:
            raise NotebookError(f"the file is {st.st_size / 2**20:.1f} MiB, over the limit of {limit / 2**20:g} MiB "
                                f"(clear the notebook's outputs and save it again)")
        chunks, got = [], 0
        while chunk := os.read(fd, 1 << 20):
            got += len(chunk)
            if got > limit:
                raise NotebookError(f"the file grew over the limit of {limit / 2**20:g} MiB while being read")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise NotebookError(f"cannot read the file ({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)


def read_notebook(path: Path) -> dict:
    """The notebook at ``path`` as a dict whose ``cells`` grading can use (see :func:`code_cells`)."""
    data = read_bytes(Path(path))
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise NotebookError("not UTF-8 text") from None
    except RecursionError:
        raise NotebookError("JSON nested too deeply") from None
    except ValueError as e:
        raise NotebookError(f"not JSON ({str(e)[:120]})") from None
    if not isinstance(nb, dict):
        raise NotebookError("not a Jupyter notebook (the JSON is not an object)")
    if "worksheets" in nb or (type(nb.get("nbformat")) is int and nb["nbformat"] < 4):
        raise NotebookError("an nbformat 3 (or older) notebook: open it in Jupyter or Colab and save it again "
                            "to convert it to nbformat 4")
    code_cells(nb)
    return nb


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """``(cell index, source)`` of every code cell; raises :class:`NotebookError` when the cells are not
    what nbformat 4 says (a list of objects whose ``source`` is a string or a list of strings)."""
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("not a Jupyter notebook (no list of cells)")
    out = []
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise NotebookError(f"cell {i} is not a JSON object")
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise NotebookError(f"code cell {i} has a source that is not text")
        out.append((i, src))
    return out
