"""Writing: `convert` -- plan, shard tasks (in-process, a process pool or Dask), work dir and lock, commit."""
