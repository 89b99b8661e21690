"""Finding, building and loading models and their tokenizers."""
