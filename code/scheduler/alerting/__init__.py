"""Findings, incidents, the outbox and Slack."""
