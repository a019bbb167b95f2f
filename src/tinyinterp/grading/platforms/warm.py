"""Train (once) and cache the models a chapter's notebook loads, when an autograder image is built.

While grading, the sandbox shows the learner's code the model cache read-only: a model missing from it
cannot be trained there, so its cells fail. ``python -m tinyinterp.grading.platforms.warm SLUG`` (run
by setup.sh, the Dockerfile or the workflow) fills ``$TINYINTERP_CACHE`` first.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function, keyword arguments): every trained model the book's notebooks load
BUILDERS = {
    "part1": ("tinyinterp.models", "part1_model", {}),
    "attn_only_1l": ("tinyinterp.circuits", "one_layer_attn_only_model", {}),
    "induction": ("tinyinterp.induction", "induction_model", {}),
    "sae": ("tinyinterp.sae_lm", "lm_sae", {}),
    "sae_topk": ("tinyinterp.sae_lm", "lm_sae", {"topk": True}),
    "brackets": ("tinyinterp.brackets", "bracket_model", {}),
    "reviews": ("tinyinterp.reviews", "review_model", {}),
    "reviews_film": ("tinyinterp.reviews", "review_model", {"shortcut": "film"}),
    "reviews_shuffled": ("tinyinterp.reviews", "review_model", {"shuffle_labels": True}),
    "reviews_music": ("tinyinterp.reviews", "review_model", {"shortcut": "music"}),
    "reviews_film_augmented": ("tinyinterp.shortcut", "augmented_model", {"shortcut": "film"}),
}

# chapter -> the models its notebook loads (tests/test_platforms.py checks this against solutions/).
# A chapter missing here warms every model: slower to build, never wrong.
CHAPTER_MODELS = {
    "01_tokens_and_embeddings": [],
    "02_attention": ["part1"],
    "03_tiny_transformer": ["part1"],
    "04_attribution": ["part1"],
    "05_attention_only": ["attn_only_1l", "part1"],
    "06_induction_heads": ["induction"],
    "07_superposition": [],
    "08_sparse_autoencoders": ["part1", "sae"],
    "09_activation_patching": ["induction", "part1"],
    "10_path_and_attribution_patching": ["induction", "part1"],
    "11_probes_and_steering": ["brackets"],
    "12_attributions": ["reviews"],
    "13_do_explanations_explain": ["reviews", "reviews_shuffled"],
    "14_catch_the_shortcut": ["reviews_film", "reviews_film_augmented"],
    "15_interpretability_at_scale": [],
}


def models_for(slug: str) -> list[str]:
    return CHAPTER_MODELS.get(slug, list(BUILDERS))


def warm(slug: str, progress: bool = False) -> list[str]:
    """Build (or load) every model ``slug`` needs; returns their names."""
    names = models_for(slug)
    for name in names:
        module, function, kwargs = BUILDERS[name]
        getattr(importlib.import_module(module), function)(progress=progress, **kwargs)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinyinterp.grading.platforms.warm",
                                description="Train and cache the models a chapter's notebook loads.")
    p.add_argument("chapter")
    args = p.parse_args(argv)
    from ..assignment import known_chapters
    from ...checkpoint import cache_dir

    if args.chapter not in known_chapters():
        print(f"warm: error: no chapter {args.chapter!r}; known: {', '.join(known_chapters())}", file=sys.stderr)
        return 2
    names = warm(args.chapter, progress=True)
    print(f"model cache {cache_dir()}: {', '.join(names) or 'no trained model needed'} for {args.chapter}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
