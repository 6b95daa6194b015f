"""Testing hook: kill this process at a named point of a conversion, to test crash safety.

`SHARDFEED_FAULT="POINT:N"` sends SIGKILL to the current process the N-th time (counting from
1, per process) it reaches `fault_point("POINT")`. Unset, `fault_point` does nothing. The
points, in the order a conversion reaches them:

- `shard-written`: a shard's rows are written, before it is made durable and renamed;
- `shard-renamed`: a shard is at its final name, before the driver records it;
- `record-saved`: the driver has recorded a finished shard in `.convert/`;
- `index-written`: the index is written, before the manifest (the commit);
- `manifest-written`: the manifest is written, before `.convert/` is removed.

The first two run where shards are written, so with `--workers 2` they kill a worker process.
"""

from __future__ import annotations

import os
import signal

_POINT, _, _COUNT = os.environ.get("SHARDFEED_FAULT", "").partition(":")
_hits = 0


def fault_point(name: str) -> None:
    """SIGKILL this process if `SHARDFEED_FAULT` names this point and its count is reached."""
    global _hits
    if name != _POINT:
        return
    _hits += 1
    if str(_hits) == _COUNT:
        os.kill(os.getpid(), signal.SIGKILL)
