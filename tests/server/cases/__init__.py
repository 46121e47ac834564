"""Tests for curbwatch.server.cases."""
