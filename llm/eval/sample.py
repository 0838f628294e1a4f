"""Continuations of prompts, greedy or sampled: a glance at what the model has learnt so far.

Both go through the KV-cached engine, so a sample costs one prefill and one small step per token.
"""

from llm.inference.engine import Engine


def greedy_continuations(model, tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Each prompt (after BOS) extended by up to `max_tokens` argmax tokens, decoded to text."""
    engine = Engine(model, tokenizer)
    texts = []
    for prompt in prompts:
        rows, _ = engine.generate_batch(tokenizer.encode(prompt, prepend=tokenizer.bos_id), num_samples=1,
                                        max_tokens=max_tokens, temperature=0.0)
        texts.append(tokenizer.decode(rows[0][1:]))
    return texts


def sampled_continuations(model, tokenizer, prompt: str, num_samples: int, max_tokens: int,
                          temperature: float, seed: int) -> list[str]:
    """`num_samples` continuations of one prompt (after BOS), drawn at `temperature` with a seeded generator."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive to sample, got {temperature}; use greedy_continuations")
    rows, _ = Engine(model, tokenizer).generate_batch(tokenizer.encode(prompt, prepend=tokenizer.bos_id),
                                                      num_samples=num_samples, max_tokens=max_tokens,
                                                      temperature=temperature, seed=seed)
    return [tokenizer.decode(row[1:]) for row in rows]
