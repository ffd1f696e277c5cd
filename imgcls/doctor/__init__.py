"""The data doctor: checks a dataset for corrupt files, duplicates, leakage and label errors."""
