"""Command-line tools: weight converters."""
