"""What operators see and steer: queries, actions, the CLI, the HTTP API, the dashboard, metrics.

Importing this package must stay cheap: control.py builds its parser from
`operator.cli` for every command, `status` included.
"""

# The run statuses for the CLI's `--status` choices. Their home is
# `scheduler.store.schema.RUN_STATUSES`; this copy exists because importing the
# store (SQLAlchemy) would make `status` and `--help` slow. A test keeps the two equal.
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "skipped", "missed", "abandoned")
