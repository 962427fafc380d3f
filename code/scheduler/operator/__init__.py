"""What operators see and steer: queries, actions, the CLI, the HTTP API, the dashboard, metrics.

Importing this package must stay cheap: control.py builds its parser from
`operator.cli` for every command, `status` included.
"""

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "skipped", "missed", "abandoned")
