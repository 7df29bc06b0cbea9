"""The embedded store: SQLite metadata and safetensors weight shards."""
