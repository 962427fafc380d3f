"""Benchmarks of the scheduler against APScheduler 3.11 and timeloop.

`python -m bench.run --all` runs them all, prints a table and writes
`docs/BENCHMARKS.md`. Each benchmark module also runs on its own:
`python -m bench.<name> --params '{...}'` prints one JSON result.
"""
