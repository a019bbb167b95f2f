"""What real patching and attribution patching cost as the model grows, and how well they agree (ch. 10).

Prints JSON:

- ``cost``: for random transformers (MLPs, LayerNorm, ``d_model = 8 n_heads``, batch 4) of growing
  ``(n_layers, n_heads, pos)``, each method of :data:`tinyinterp.patching_cost.METHODS`: the patches it
  answers, the forward and backward passes it ran (counted by hooks) and its seconds (best of
  ``--repeats``, one thread);
- ``slopes``: per method, the least-squares slope of log(passes) and of log(seconds) against
  log(patches) (real patching: about 1; attribution: about 0 for passes);
- ``agreement``: Pearson correlation and largest error of attribution patching against real patching,
  for every head and every residual-stream layer x position, on the induction model (chapter 6,
  :func:`~tinyinterp.prompts.induction_task`) and the Part I model
  (:func:`~tinyinterp.prompts.object_completion_task`; positions from the first one where the prompts
  differ).

    python benchmarks/patching.py                      # the full sweep
    python benchmarks/patching.py --quick              # three small sizes (a few seconds)
    python benchmarks/patching.py --figures /tmp/figs  # also save agreement.png and cost.png there
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from tinyinterp import induction as I
from tinyinterp import patching as P
from tinyinterp import patching_cost as C
from tinyinterp.models import part1_model
from tinyinterp.prompts import induction_task, object_completion_task

FULL = [(1, 2, 8), (2, 2, 16), (2, 4, 32), (4, 4, 32), (4, 8, 64), (8, 8, 64), (8, 16, 128)]
QUICK = [(1, 2, 8), (2, 4, 16), (4, 4, 32)]


def slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def slopes(rows) -> dict:
    out = {}
    for name in C.METHODS:
        mine = [r for r in rows if r["method"] == name]
        if len({r["n_patches"] for r in mine}) > 1:
            x = [r["n_patches"] for r in mine]
            out[name] = {"passes": round(slope(x, [r["forward"] + r["backward"] for r in mine]), 3),
                         "seconds": round(slope(x, [r["seconds"] for r in mine]), 3)}
    return out


def book_agreement() -> dict:
    """Real and estimated patches on the two book models: {name: (real, estimate, groups)}."""
    model, _, _ = I.induction_model(progress=False)
    task = induction_task(32, 10, model.cfg.d_vocab, seed=0)
    lm, _, _ = part1_model(progress=False)
    story = object_completion_task(8, seed=0)
    first = int((story.clean != story.corrupted).any(0).nonzero()[0])
    out = {}
    for label, m, t, start in (("induction model", model, task, 0), ("Part I model", lm, story, first)):
        args = (m, t.clean, t.corrupted, t.metric)
        changed = (t.clean != t.corrupted).any(0)[start:].repeat(m.cfg.n_layers, 1).flatten().tolist()
        out[f"{label}, heads"] = (P.patch_head_outputs(*args), P.attribution_patch_heads(*args), None)
        out[f"{label}, resid"] = (P.patch_resid_by_layer_pos(*args)[:, start:],
                                  P.attribution_patch_resid_by_layer_pos(*args)[:, start:],
                                  ["token changed" if c else "same token" for c in changed])
    return out


def save_figures(folder: Path, agreement: dict, rows) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))
    for ax, (name, (real, est, groups)) in zip(axes, agreement.items()):
        C.plot_agreement(real, est, name, ax=ax, groups=groups)
    fig.tight_layout()
    fig.savefig(folder / "agreement.png", dpi=120)
    fig = C.plot_cost(rows)
    fig.suptitle("real patching vs attribution patching, random models of growing size (one thread)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "cost.png", dpi=120)
    plt.close("all")
    return [str(folder / "agreement.png"), str(folder / "cost.png")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="three small sizes only")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per method (the best is kept)")
    parser.add_argument("--figures", type=Path, default=None, help="folder to save agreement.png and cost.png in")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    start = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    rows = C.cost_sweep(sizes, batch=4, repeats=args.repeats)
    agreement = book_agreement()
    report = {
        "sizes": [list(s) for s in sizes], "cost": rows, "slopes": slopes(rows),
        "agreement": {name: {"all": C.agreement(real, est), **({} if groups is None else {
            g: C.agreement(real.flatten()[[x == g for x in groups]], est.flatten()[[x == g for x in groups]])
            for g in dict.fromkeys(groups)})} for name, (real, est, groups) in agreement.items()},
        "total_seconds": round(time.perf_counter() - start, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if args.figures is not None:
        report["figures"] = save_figures(args.figures, agreement, rows)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
