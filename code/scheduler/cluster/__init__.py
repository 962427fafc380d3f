"""Membership, leases, the leader, the reaper, and health."""
