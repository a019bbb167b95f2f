"""Sparse autoencoders: recovery of known features on toy data, and quality on the Part I model.

Prints JSON with keys toy_mmcs, toy_seconds, lm_l0, lm_fve, lm_ce_recovered, lm_dead_fraction,
lm_seconds. Goals (2 threads): toy MMCS >= 0.95 in <= 20 s; on the language model, CE loss
recovered >= 0.9 at L0 <= 30 in <= 60 s. The SAEs are trained from scratch here (no SAE cache);
the Part I model itself comes from the model cache (trained first if it is missing, not timed).
"""

import json
import time

import torch

from tinyinterp.models import part1_model
from tinyinterp.sae_lm import LM_SAE, LM_SAE_LAYER, LM_SAE_TRAIN, evaluate_lm_sae, lm_sae_windows, train_lm_sae
from tinyinterp.toy_features import TOY_DATA, TOY_SAE, TOY_TRAIN, toy_experiment


def main():
    torch.set_num_threads(2)
    _, toy = toy_experiment()

    model, _, _ = part1_model(progress=False)
    start = time.perf_counter()
    sae, info = train_lm_sae(model, progress=False)
    metrics = evaluate_lm_sae(model, sae, lm_sae_windows("eval"), LM_SAE_LAYER)
    lm_seconds = time.perf_counter() - start

    print(json.dumps({
        "toy_mmcs": round(toy["mmcs"], 4),
        "toy_seconds": round(toy["seconds"], 2),
        "lm_l0": round(metrics.l0, 2),
        "lm_fve": round(metrics.fve, 4),
        "lm_ce_recovered": round(metrics.ce_recovered, 4),
        "lm_dead_fraction": round(metrics.dead_fraction, 4),
        "lm_seconds": round(lm_seconds, 2),
        "details": {
            "toy": {"data": TOY_DATA.to_dict(), "sae": TOY_SAE.to_dict(), "train": TOY_TRAIN.to_dict(),
                    "l0": round(toy["l0"], 2), "true_l0": round(toy["true_l0"], 2), "fve": round(toy["fve"], 4)},
            "lm": {"layer": LM_SAE_LAYER, "sae": LM_SAE.to_dict(), "train": LM_SAE_TRAIN.to_dict(),
                   "clean_loss": round(metrics.clean_loss, 4), "spliced_loss": round(metrics.spliced_loss, 4),
                   "zero_ablated_loss": round(metrics.ablated_loss, 4),
                   "collect_and_train_seconds": round(info["seconds"], 2)},
            "threads": 2,
        },
        "goals": {"toy": "mmcs >= 0.95 in <= 20 s", "lm": "ce_recovered >= 0.9 at l0 <= 30 in <= 60 s"},
    }, indent=2))


if __name__ == "__main__":
    main()
