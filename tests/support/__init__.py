"""Helpers shared by test modules (imported by tests, never by a conftest)."""
