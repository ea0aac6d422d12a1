"""Serving: text generation from a checkpoint (an OpenAI-compatible server comes later)."""
