"""benchmarks/claims.py counts claims honestly: a failed assert, a kernel that dies and the cells it
never ran all count against the book, and each run gets its own seed offset, threads and cache."""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("claims_benchmark", ROOT / "benchmarks" / "claims.py")
claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)


def _notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a test notebook")] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_claim_cells_are_code_cells_with_an_assert(tmp_path):
    path = _notebook(tmp_path / "a.ipynb", ["x = 1", "assert x == 1", "def f():\n    assert True", "# assert in a comment? no:\nprint('assert')"])
    assert claims.claim_cells(path) == [2, 3]


def test_failures_and_a_dead_kernel_count_against_the_claims(tmp_path):
    path = _notebook(tmp_path / "b.ipynb", [
        "import os\nassert os.environ['TINYINTERP_SEED_OFFSET'] == '2' and os.environ['OMP_NUM_THREADS'] == '1'",
        "import torch, tinyinterp.checkpoint as c\n"
        "assert torch.get_num_threads() == 1 and 'claims-o2-t1' in str(c.cache_dir())",  # its own empty cache
        "x = 1\nassert x == 2",
        "os._exit(1)",  # the kernel dies here ...
        "assert True",  # ... so this claim never runs
    ])
    run = claims.run_one(offset=2, threads=1, notebooks=[path], jobs=1, timeout=120)
    summary = claims.summarise([run])
    assert (summary["claims"], summary["claims_held"]) == (4, 2)
    failing = {c["cell"]: c for c in summary["failing_cells"]}
    assert set(failing) == {3, 4, 5}
    assert failing[3]["claim"] and failing[3]["error"] == "AssertionError at `assert x == 2`"
    assert not failing[4]["claim"] and "DeadKernelError" in failing[4]["error"]
    assert failing[5]["claim"] and failing[5]["error"].startswith("did not run")
    assert summary["runs"][0]["run"] == "offset 2, 1 thread" and summary["runs"][0]["seconds"] > 0


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for argv in (["--notebooks", str(tmp_path / "missing.ipynb")], ["--threads", "0"], ["--offsets", "x"]):
        with pytest.raises(SystemExit) as e:
            claims.main(argv)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
