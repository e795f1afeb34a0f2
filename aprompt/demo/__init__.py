"""The README demo: optimize an object-counting program on the embedded local model."""
