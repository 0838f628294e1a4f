"""The report card of a run and the runs it descends from (python -m llm.report DIR): see card.py."""
