"""Deskmate in Microsoft Teams: the Bot Framework handler and endpoint (channel.py), and the
messages and Adaptive Cards built and read (cards.py). Only this package imports botbuilder."""
