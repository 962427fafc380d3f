"""Dispatching due slots, running them, capturing their logs and recording their ends."""
