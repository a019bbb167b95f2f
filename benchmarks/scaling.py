"""What each interpretability method costs as the model grows, and the extrapolation to a frontier-sized model (ch. 15).

Prints JSON:

- ``patching``: for random transformers (MLPs, LayerNorm, ``d_head = 8``, batch 2) of growing
  ``(n_layers, d_model, n_pos)``, each method of :data:`tinyinterp.scaling.PATCHING_METHODS`: the patches it
  answers, the forward and backward passes it ran (counted by hooks), whether they equal
  :func:`~tinyinterp.scaling.patching_pass_count`, and its seconds (one run, one thread);
- ``sae``: an SAE (``d_sae = 8 d_in``) trained for a few steps on each width: passes counted by hooks and
  seconds per step;
- ``exponents``: power-law fits (log-log least squares): passes against patches per method, seconds per
  forward pass against the model's parameters, seconds per SAE step against the SAE's parameters;
- ``frontier``: for a model of :data:`~tinyinterp.scaling.FRONTIER`'s shape, each method's exact pass
  count, what the fitted power law predicts, and their ratio; and the size of SAEs on its residual stream.

Pass counts are exact and machine-independent; seconds are this machine's, under its load (the 1-minute
load average is reported).

    python benchmarks/scaling.py            # the full sweep (under a minute)
    python benchmarks/scaling.py --quick    # two small sizes (a few seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import time

from tinyinterp import scaling as S

FULL = [(1, 32, 8), (2, 64, 8), (3, 128, 8), (4, 256, 8)]
QUICK = [(1, 32, 8), (2, 64, 8)]
BY_POS_MAX = 3  # patch head by pos only on the first three sizes: on the largest it alone takes ~9 s here
SAE_WIDTHS = [32, 64, 128, 256]


def frontier(fits: dict) -> dict:
    f = S.FRONTIER
    patches = S.frontier_patches(f["n_layers"], f["n_heads"], f["n_pos"])
    out = {"shape": f, "methods": {}}
    for method in S.PATCHING_METHODS:
        exact = sum(S.patching_pass_count(f["n_layers"], f["n_heads"], f["n_pos"], method))
        n = patches.get(method, patches["patch heads"])
        fitted = S.extrapolate(fits[method], n)
        out["methods"][method] = {"patches": n, "exact_passes": exact, "fitted_passes": round(fitted, 1),
                                  "fitted_over_exact": round(fitted / exact, 3)}
    out["sae_params"] = {f"d_sae {d_sae}": S.sae_param_count(f["d_model"], d_sae)
                         for d_sae in (2 ** 20, 2 ** 24, 2 ** 25)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes only")
    args = parser.parse_args()
    start = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    others = [m for m in S.PATCHING_METHODS if m != "patch head by pos"]
    rows = S.patching_sweep(sizes, others) + S.patching_sweep(sizes[:BY_POS_MAX], ["patch head by pos"])
    for r in rows:
        r["matches_closed_form"] = (r["forward"], r["backward"]) == S.patching_pass_count(
            r["n_layers"], r["n_heads"], r["n_pos"], r["method"])
    sae_rows = S.sae_sweep(SAE_WIDTHS[:2] if args.quick else SAE_WIDTHS, steps=20)
    fits = S.exponents(rows, "n_patches", "passes")
    per_pass = S.exponents([r for r in rows if r["method"] == "patch heads"], "n_params", "seconds_per_pass", by=None)
    sae_fit = S.exponents(sae_rows, "n_params", "seconds_per_step", by=None)
    report = {
        "sizes": [list(s) for s in sizes], "patching": rows, "sae": sae_rows,
        "all_counts_match_closed_form": all(r["matches_closed_form"] for r in rows),
        "exponents": {"passes_vs_patches": {m: round(a, 4) for m, (a, _) in fits.items()},
                      "seconds_per_pass_vs_params": round(per_pass["all"][0], 3),
                      "sae_seconds_per_step_vs_params": round(sae_fit["all"][0], 3)},
        "frontier": frontier(fits),
        "total_seconds": round(time.perf_counter() - start, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
