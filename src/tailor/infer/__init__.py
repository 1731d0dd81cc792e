"""Generation: token ids in, token ids out. Knows nothing about HTTP or terminals."""
