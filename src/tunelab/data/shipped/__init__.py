"""Shipped data for the forgetting probe and replay (see README.md here)."""
