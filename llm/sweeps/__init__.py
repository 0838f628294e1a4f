"""Sweeps: reading what a sweep's runs wrote (results table, status, loss curves)."""
