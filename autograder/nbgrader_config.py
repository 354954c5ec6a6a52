"""nbgrader configuration of the workbook's course; the settings live in autograder/course.py.

`python -m autograder.release` and `python -m autograder.grade` build the same configuration in
process. This file is what the nbgrader command line reads when run from this directory:

    cd autograder && ../.venv/bin/nbgrader autograde lab0.1 --student alice
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from autograder.course import configure  # noqa: E402

configure(get_config())  # noqa: F821 (get_config is provided by traitlets when it loads this file)
