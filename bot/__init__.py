"""Deskmate's running service: channels, orchestrator, ledger and the `deskmate` command."""
