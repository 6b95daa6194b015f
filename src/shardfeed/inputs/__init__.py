"""Inputs: scanning and validating samples (per-ID `.npy` files, a folder per class, one stacked `.npy`,
one `.npz`), labels and partitions, local or at fsspec URLs.

The lowest wing: it knows nothing of stores, conversion or training.
"""
