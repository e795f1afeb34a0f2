"""Language-model clients, limits, retries, caching and usage accounting."""
