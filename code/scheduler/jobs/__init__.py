"""Declaring jobs, discovering them, and their schedules."""
