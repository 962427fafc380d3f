"""System tests: the daemon as real processes, driven through control.py and signals."""
