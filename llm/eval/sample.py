"""Greedy continuations of a few prompts: a glance at what the model has learnt so far."""

import torch


@torch.no_grad()
def greedy_continuations(model: torch.nn.Module, tokenizer, prompts: list[str], max_tokens: int,
                         device: torch.device) -> list[str]:
    """Each prompt (after BOS) extended by `max_tokens` argmax tokens, decoded to text."""
    texts = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, prepend=tokenizer.bos_id)
        tokens = torch.tensor([ids], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            next_id = model(tokens)[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_id], dim=1)
        texts.append(tokenizer.decode(tokens[0, 1:].tolist()))
    return texts
