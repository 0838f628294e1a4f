"""llm: train small ChatGPT-style language models from Hydra-composed configs."""
