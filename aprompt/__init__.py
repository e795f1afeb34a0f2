"""aprompt: async-first prompt optimization for multi-stage language-model programs."""
