"""Storage: the store format (manifest, index, shards), `Store` for reading, integrity and inspection.

`backends/` is the only place that imports h5py and zarr. Storage knows nothing of conversion or training.
"""
