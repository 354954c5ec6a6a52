"""The graded tasks' case generators, sequence checkers and adapters, one module per chapter.

A test cell of chapter N is one call into `labkit.exercises.chN`, so the notebook's namespace keeps
only the student's own names.
"""
