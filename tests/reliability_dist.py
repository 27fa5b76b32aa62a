"""Two CPU processes under detectron2's ``launch`` where rank 1 fails (used by
tests/test_reliability_faults.py; run as a script, not collected).

    python tests/reliability_dist.py hang|die|bad TIMEOUT_SECONDS

``hang``: rank 1 stops answering (sleeps) while rank 0 waits in a barrier; ``die``: rank 1
exits at once; ``bad``: rank 1 meets bad input (through ``launch_reporting_errors``, which
must end the command with status 2 and one ``error:`` line). Either way the command must end with a non-zero status within about the
timeout instead of waiting forever. Rank 0 prints ``rank0-waiting`` before the barrier and
``rank0-done`` only if it got past it.
"""
from __future__ import annotations

import datetime
import os
import sys
import time


def worker(mode: str) -> None:
    from detectron2.utils import comm

    if comm.get_rank() == 1:
        if mode == "bad":
            from deepcens.errors import DeepcensInputError

            raise DeepcensInputError("data/broken.tif", "cannot decode image")
        if mode == "die":
            os._exit(3)
        time.sleep(600)  # a hung peer
        return
    print("rank0-waiting", flush=True)
    comm.synchronize()
    print("rank0-done", flush=True)


def main() -> None:
    from detectron2.engine import launch

    from deepcens.engine.launch_utils import launch_reporting_errors

    mode, seconds = sys.argv[1], float(sys.argv[2])
    timeout = datetime.timedelta(seconds=seconds)
    if mode == "bad":
        sys.exit(launch_reporting_errors(worker, 2, dist_url="auto", args=(mode,), timeout=timeout))
    launch(worker, 2, dist_url="auto", args=(mode,), timeout=timeout)


if __name__ == "__main__":
    main()
