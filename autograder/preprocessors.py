"""nbgrader preprocessors of the workbook: stubs that name their task.

nbgrader replaces a `### BEGIN SOLUTION` ... `### END SOLUTION` region with one fixed stub,
`raise NotImplementedError()`. `TaskStubs` writes instead

    # YOUR CODE HERE
    raise NotImplementedError("Task 2: merge a pair (t2-merge): replace this line with your code")

taking the task's title from the nearest markdown heading above the cell that starts with "Task"
(e.g. `## Task 2: merge a pair`) and falling back to the cell's grade_id. Everything else is
nbgrader's ClearSolutions (markdown solution cells, the checks of solution-cell metadata).
"""

from __future__ import annotations

import json
import re
from typing import Any

from nbgrader.preprocessors import ClearSolutions

TASK_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(task\b.*?)\s*#*\s*$", re.IGNORECASE | re.MULTILINE)


def task_titles(nb: Any) -> dict[int, str]:
    """{cell index: title of the nearest 'Task ...' heading above it} for every cell."""
    titles, current = {}, ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found = TASK_HEADING.findall(cell.source)
            if found:
                current = " ".join(found[-1].replace("`", "").split())
        titles[index] = current
    return titles


def stub_message(title: str, grade_id: str) -> str:
    task = f"{title} ({grade_id})" if title else f"Task {grade_id}"
    return f"{task}: replace this line with your code"


class TaskStubs(ClearSolutions):
    """ClearSolutions whose Python stub raises NotImplementedError naming the task."""

    def preprocess(self, nb, resources):
        self._titles = task_titles(nb)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell {cell_index}")
        message = stub_message(self._titles.get(cell_index, ""), grade_id)
        saved = dict(self.code_stub)
        literal = json.dumps(message, ensure_ascii=False)
        self.code_stub = {**saved, "python": f"# YOUR CODE HERE\nraise NotImplementedError({literal})"}
        try:
            return super().preprocess_cell(cell, resources, cell_index)
        finally:
            self.code_stub = saved
