"""The README demo: optimize a sentence-negation program on the embedded local model."""
