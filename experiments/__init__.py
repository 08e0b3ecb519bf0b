"""What compares runs: the ablation of the four rounds (ablate.py), the same report from runs
already trained (compare.py), and the report builder both use (report.py)."""
