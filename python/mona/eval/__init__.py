"""Evaluation: metrics, slice-wise inference reassembled to volumes, reports."""
