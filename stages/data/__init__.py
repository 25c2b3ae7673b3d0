"""Dataset readers, the built-in demo dataset, ingestion and the cached view."""
