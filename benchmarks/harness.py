"""Latency of tinyinterp.check with the reference solution, over every registered exercise.

Prints JSON: {"check_latency_median_s": ..., "per_exercise_s": {...}}. Goal: median <= 0.5 s.
"""

import json
import statistics
import time

import torch

from tinyinterp.harness import all_exercises, check


def main():
    torch.set_num_threads(2)
    per = {}
    for ex_id, ex in all_exercises().items():
        check(ex_id, ex.reference)  # warm-up (imports, allocator)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            r = check(ex_id, ex.reference)
            runs.append(time.perf_counter() - t)
            assert r.passed, r.message
        per[ex_id] = round(statistics.median(runs), 4)
    print(json.dumps({"check_latency_median_s": round(statistics.median(per.values()), 4),
                      "check_latency_max_s": max(per.values()), "exercises": len(per),
                      "per_exercise_s": per, "goal": "median <= 0.5"}, indent=2))


if __name__ == "__main__":
    main()
