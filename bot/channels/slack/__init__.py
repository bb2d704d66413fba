"""Deskmate in Slack: the connection and handlers (channel.py), Block Kit built (blocks.py) and
submitted views read (forms.py). Only this package imports Slack's SDKs."""
