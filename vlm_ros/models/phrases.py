"""Object phrases named in an instruction or an answer: one pure extractor for prompts and detectors.

"where is the red mug?" -> ["red mug"]. Two uses, one set of rules:
- a detector (and Florence-2's open-vocabulary detection) wants short noun phrases: the phrase ends at the first
  preposition, verb or relative word after it starts ("the mug on the table" -> "mug");
- a VLM that reads referring expressions (PaliGemma ``detect``, Qwen2.5-VL) gets the whole expression
  (``referring=True``: "the mug left of the ball" -> "mug left of the ball").
"""

from __future__ import annotations

import re

__all__ = ["grounding_phrases", "object_phrases"]

# Lead-ins removed from the start of a clause, longest first (matched as whole words).
_LEAD_INS_TEXT = """
    where is | where are | where's | where can i find | where do you see | what is | what's | what are |
    which is | which are | which | what color is | what colour is | what color are | what colour are |
    what color | what colour | what shape is | what shape are | what kind of | what type of | how many |
    how big is | how far is | is there | are there | there is | there are | there's | i see | i can see |
    you can see | we can see | can you see | do you see | can you find | can you locate | can you show me |
    could you find | please | find | locate | show me | show | point to | point at | point out | detect | look for |
    search for | box | draw a box around | mark | highlight | segment | outline | give me | get | grab | grasp |
    pick up | bring me | bring | hand me | count | describe | tell me about | what do you see | what can you see |
    give me the box of | give me the boxes of | give me the box for | give me the boxes for |
    look at | the image shows | the picture shows | the photo shows | the scene shows | this image shows |
    this is | these are | it is | it's | they are | in the image | in the picture | in the scene |
    image of | picture of | photo of | a photo of | a picture of | an image of
"""
_LEAD_INS = sorted(dict.fromkeys(" ".join(s.split()) for s in _LEAD_INS_TEXT.split("|") if s.strip()),
                   key=len, reverse=True)
# Words that start a modifier or relative clause: a noun phrase ends before them.
_CUT_WORDS = {
    "on", "in", "at", "under", "above", "below", "beneath", "over", "near", "behind", "beside", "besides", "between",
    "inside", "outside", "next", "left", "right", "front", "top", "bottom", "from", "to", "into", "onto", "of", "by",
    "with", "without", "for", "that", "which", "who", "whose", "where", "is", "are", "was", "were", "be", "has", "have",
    "can", "could", "should", "would", "will", "do", "does", "did", "please", "there", "here", "as", "than", "like",
    "around", "against", "along", "across", "toward", "towards", "sitting", "lying", "standing", "placed", "located",
}
# Words dropped from the start of a phrase.
_DETERMINERS = {
    "the", "a", "an", "all", "any", "some", "every", "each", "my", "your", "our", "their", "his", "her", "its", "this",
    "that", "these", "those", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several",
    "many", "few", "other", "another", "both", "only", "single", "me", "us", "them", "it", "of", "to",
}
# Phrases that name nothing a detector could box.
_NON_OBJECTS = {
    "it", "them", "they", "this", "that", "these", "those", "there", "here", "something", "anything", "everything",
    "nothing", "thing", "things", "object", "objects", "item", "items", "image", "picture", "photo", "scene", "view",
    "yes", "no", "i", "you", "we", "color", "colour", "shape", "size", "one", "ones", "what", "which", "where", "how",
}
_CLAUSE_SPLIT = re.compile(r"[.,;:!?()\[\]{}\n]+|\b(?:and|or|but|then|also|plus|while|whereas)\b")
_NON_WORD = re.compile(r"[^a-z0-9' -]+")
MAX_TEXT = 4096  # characters read: bounded work on hostile input


def object_phrases(text: str, max_phrases: int = 8, max_words: int | None = None, *,
                   referring: bool = False) -> list[str]:
    """Object phrases named in an instruction or answer, lower-case, in order, without duplicates.

    Heuristic and pure: clauses are split at punctuation and conjunctions; question and command lead-ins
    ("where is", "find", "how many"...), determiners and numbers are dropped. A noun phrase (the default) ends at
    the first preposition, verb or relative word after it starts and keeps its last `max_words` (4) words;
    a referring expression (``referring=True``) runs to the end of its clause and keeps its first `max_words` (12).
    Examples: "where is the red mug?" -> ["red mug"]; "find the cube and the blue ball" -> ["cube", "blue ball"];
    "There are two red cubes on the table." -> ["red cubes"] (referring: ["red cubes on the table"]).
    """
    phrases: list[str] = []
    if max_phrases <= 0:
        return phrases
    words_kept = max_words if max_words is not None else (12 if referring else 4)
    for clause in _CLAUSE_SPLIT.split(text[:MAX_TEXT].lower()):
        words = [w.strip("'-") for w in _NON_WORD.sub(" ", clause).split()]
        words = _strip_lead_ins([w for w in words if w])
        head = words if referring else _noun_phrase(words)
        while head and (head[0] in _DETERMINERS or head[0].isdigit()):
            head = head[1:]
        phrase = " ".join(head[:words_kept] if referring else head[-words_kept:])
        if phrase and phrase not in _NON_OBJECTS and phrase not in phrases:
            phrases.append(phrase)
            if len(phrases) >= max_phrases:
                break
    return phrases


def _noun_phrase(words: list[str]) -> list[str]:
    """The words up to the first cut word after the phrase has started ("the left mug": a position word before the
    noun is skipped)."""
    head: list[str] = []
    for w in words:
        if w in _CUT_WORDS:
            if any(h not in _DETERMINERS for h in head):
                break
            continue
        head.append(w)
    return head


def _strip_lead_ins(words: list[str]) -> list[str]:
    """Remove question/command lead-ins (repeatedly: "please find ...") from the start of a clause."""
    changed = True
    while changed and words:
        changed = False
        joined = " ".join(words)
        for lead in _LEAD_INS:
            if joined == lead or joined.startswith(lead + " "):
                words = words[len(lead.split()):]
                changed = True
                break
    return words


def grounding_phrases(instruction: str, answer: str = "", max_phrases: int = 8) -> list[str]:
    """What to ask a detector for: the objects the instruction names, else those the model's answer names."""
    return object_phrases(instruction, max_phrases) or object_phrases(answer, max_phrases)
