"""Scaling-law analysis of sweep results: pure numpy/pandas/scipy/matplotlib, no torch.

Modules, each one concept: `hardware` (peak FLOPs per accelerator), `table` (loading results),
`conventions` (what counts as N and C), `isoflop` (Chinchilla Approach 2), `parametric`
(Approach 3, fitted by `lbfgs` or `varpro` on the loss in `objective`), `miniseries` (a depth ladder), `planner` (budget -> run), `plots`. The command line lives in `__main__`.
This file imports nothing so that training code can import `llm.analysis.hardware` cheaply.
"""
