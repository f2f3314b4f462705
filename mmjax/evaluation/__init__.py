"""Evaluation: eval sets, evaluators and their metrics, the report."""
