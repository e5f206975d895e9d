"""chatd: durable LLM chat sessions on PostgreSQL."""

__version__ = "0.1.0"
