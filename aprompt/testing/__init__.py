"""Test helpers: fake LM servers on loopback."""
