"""Chat tasks: datasets of conversations for midtraining, finetuning and chat evaluation.

`llm.tasks.base` holds the Task view, the mixtures and the multiple-choice rendering; each other
module is one task. `llm.tasks.registry` names them and builds the stage mixtures that
conf/stage/mixture/*.yaml describe (the reference's, and their offline stand-ins). Sources and
licences: README.md here.
"""
