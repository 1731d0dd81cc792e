"""Datasets: read and validate JSONL files, render conversations into (input_ids, labels)."""
