"""How fast do induction heads form? Chapter 6's recipe, trained from scratch on 2 threads.

Prints JSON: {"seconds_to_induction": ..., "final_induction_score": ..., "steps": ...}.
``seconds_to_induction``: wall-clock seconds from the first training step (metric logging
included; data generation excluded) until, on held-out ``[BOS] + r + r`` sequences with
``len(r)`` in 10, 20, 30, 40 (lengths that no training span has), the mean loss on the second copy
is below 1.0 nat and the best head's induction score is above 0.7. ``steps``: the training steps
taken by then. ``cpu_seconds_to_induction``: the process's CPU time over the same span (both
threads), a figure that other programs running on the machine inflate less than wall-clock.
Goal: seconds_to_induction <= 30 (public CPU reproductions take 6-8 minutes).
"""

import json
import os
import time

import torch

from tinyinterp import induction as I


def main():
    torch.set_num_threads(2)
    start = time.perf_counter()
    model, history = I.train_induction_model(progress=False)
    total = time.perf_counter() - start
    i = I.phase_change_index(history)
    print(json.dumps({
        "seconds_to_induction": None if i is None else round(history["seconds"][i], 2),
        "final_induction_score": round(history["induction"][-1], 3),
        "steps": None if i is None else history["step"][i],
        "cpu_seconds_to_induction": None if i is None else round(history["cpu_seconds"][i], 2),
        "final_repeat_loss": round(history["mean_repeat_loss"][-1], 3),
        "total_steps": len(history["train_loss"]),
        "total_seconds_with_data": round(total, 2),
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": {"model": I.INDUCTION_MODEL.to_dict(), "train": I.INDUCTION_TRAIN.to_dict(),
                   "data": I.INDUCTION_DATA.to_dict()},
        "goal": "seconds_to_induction <= 30",
    }, indent=2))


if __name__ == "__main__":
    main()
