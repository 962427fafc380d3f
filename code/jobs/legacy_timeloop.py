"""Example: a module written for timeloop keeps working unchanged.

The scheduler finds the module-level `Timeloop` and runs its jobs on its own
dispatcher (fixed-rate slots, run records), not on timeloop's threads.
"""

from datetime import timedelta

from timeloop import Timeloop

tl = Timeloop()


@tl.job(interval=timedelta(seconds=20))
def cleanup_tmp() -> None:
    print("cleaned temporary files")
