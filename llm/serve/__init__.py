"""Serving a chat model: an OpenAI-compatible API and a web UI over continuously batched replicas."""
