"""The exercise harness: registry, safe runner, judge, ``check`` and ``progress``."""

from .check import CheckResult, check, progress, reset_progress
from .registry import Case, Exercise, Mistake, all_exercises, get_exercise, register
from .revisit import RevisitExercise, uses

__all__ = ["CheckResult", "check", "progress", "reset_progress", "Case", "Exercise", "Mistake",
           "all_exercises", "get_exercise", "register", "RevisitExercise", "uses"]
