"""What operators see and steer: queries, actions, the CLI, the HTTP API, the dashboard, metrics."""
