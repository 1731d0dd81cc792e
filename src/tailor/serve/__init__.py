"""The OpenAI-compatible HTTP server: registry of served models, routes, schemas, errors."""
