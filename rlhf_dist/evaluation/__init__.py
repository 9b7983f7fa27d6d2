"""Evaluation against the task's hidden gold scorer (the simulated labeler)."""
