"""Training, evaluation, benchmark and batch jobs (may import anything)."""
