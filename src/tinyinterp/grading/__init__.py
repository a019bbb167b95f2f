"""Bulk grading with hidden tests, in a sandbox that learner code cannot tamper with.

The learner's code runs in a child process (:mod:`.child`) under :mod:`.sandbox` limits; the child
only *computes* outputs for the test inputs it is given. Every comparison happens here, in the
grading process, with the same judge as ``tinyinterp.check``.
"""

from .assignment import Assignment, load_assignment
from .grader import SubmissionResult, grade_notebook

__all__ = ["Assignment", "load_assignment", "SubmissionResult", "grade_notebook"]
