"""Durable state: cursors, the write ledger, quarantine and escalation history (SQLite or PostgreSQL)."""
