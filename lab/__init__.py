"""The local lab: real services for ops.runbooks tests and demos (`python -m lab up|down|status`)."""
