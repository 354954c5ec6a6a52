"""The chapters' graded checks: one call per test cell, with their generators and adapters (chN.py)."""
