"""Inputs: scanning and validating per-ID `.npy` files, labels and partitions, local or at fsspec URLs.

The lowest wing: it knows nothing of stores, conversion or training.
"""
