"""Using a trained model: KV-cached generation (engine) and the chat format's calculator tool."""
