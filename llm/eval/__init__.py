"""Measuring models: bits per byte (bpb), samples, and the CORE metric (core) on a bundle of tasks
(bundle: the on-disk format and the real download; offline: one built from held-out corpus text),
chat models on the chat tasks and ChatCORE (chat), and running model-written programs against
their tests (sandbox)."""
