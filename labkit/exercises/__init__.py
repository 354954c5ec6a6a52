"""labkit.exercises: one call per graded test cell (chN.py), with its generators, sequence checkers and adapters.

A test cell of chapter N is one call into `labkit.exercises.chN`, so the notebook's namespace keeps
only the student's own names.
"""
