"""The workbook's grading tooling around nbgrader: release (solutions/ -> notebooks/), autograde,
feedback and grade export. See autograder/README.md for the instructor workflow."""
