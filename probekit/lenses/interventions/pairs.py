"""Prompt pairs for patching: read them from a file or a task, and turn them into token ids.

A pair is ``{"a": <prompt with context>, "b": <prompt without>, "answer": <answer>}``: text for
models with a tokenizer (``hf:``), lists of token ids for toy models with token inputs (text
models take id lists too; id lists may add ``"prefix": k``, the number of leading tokens of B
aligned with A's first tokens, e.g. 1 for a BOS). A task provides pairs through a method
``prompt_pairs(n: int, seed: int) -> list[dict]``.

**The answer's tokens** (text). Both prompts are tokenised with the tokenizer's special tokens
(e.g. Llama's BOS); the answer's tokens are those that ``tokenize(prompt + answer)`` has after
``tokenize(prompt)``, i.e. the answer as the model would read it in context. When that fails -
the tokenizer merges the end of a prompt with the start of the answer, so ``tokenize(prompt)`` is
not a prefix, or A and B would get different answer tokens - the answer is tokenised on its own
(no special tokens) and appended to both prompts, so both runs always score the same tokens.
``answer_tokenization`` in the results records which rule each pair used (``context`` or
``separate``). Special tokens that both prompts start with (a BOS) form the pair's ``prefix``:
they are aligned with each other, the rest of B with the end of A.
"""

from __future__ import annotations

import json
from pathlib import Path

from probekit.errors import DataError, UsageError
from probekit.lenses.interventions.patching import TokenPair
from probekit.models.anatomy import anatomy_of
from probekit.models.capabilities import has

KEYS = ("a", "b", "answer")


def read_pairs(path: str | Path) -> list[dict]:
    """Pairs from a JSON-lines file, one ``{"a": ..., "b": ..., "answer": ...}`` object a line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--pairs file {path} does not exist")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{i} is not JSON") from None
        records.append(_check_record(rec, f"{path}:{i}"))
    if not records:
        raise DataError(f"{path} holds no prompt pairs (one JSON object a line: {{\"a\": ..., \"b\": ..., "
                        f"\"answer\": ...}})")
    return records


def task_pairs(host, task: str, params: dict, n: int, seed: int) -> list[dict]:
    """``n`` pairs from a registered task that has ``prompt_pairs(n, seed)``."""
    task_cls = host.tasks.get(task)
    if not callable(getattr(task_cls, "prompt_pairs", None)):
        able = sorted(name for name in host.tasks.names() if callable(getattr(host.tasks.get(name), "prompt_pairs",
                                                                               None)))
        raise UsageError(f"task {task!r} makes no prompt pairs (no prompt_pairs(n, seed) method); tasks that do: "
                         f"{', '.join(able) or '(none registered)'}")
    if n < 1:
        raise UsageError(f"--n-pairs must be >= 1, got {n}")
    records = task_cls(**params).prompt_pairs(n, seed)
    if not records:
        raise DataError(f"task {task!r} made no prompt pairs")
    return [_check_record(r, f"task {task!r} pair {i}") for i, r in enumerate(records)]


def _check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict) or any(k not in rec for k in KEYS):
        raise DataError(f"{where} must be an object with keys {', '.join(KEYS)}")
    for k in KEYS:
        v = rec[k]
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, int) for t in v))):
            raise DataError(f"{where}: {k!r} must be text or a list of token ids")
    return rec


def encode_pairs(adapter, records: list[dict]) -> list[TokenPair]:
    """Token ids of each pair for ``adapter`` (text through its tokenizer; id lists as given)."""
    tokenizer = adapter.tokenizer if has(adapter, "tokenizer") else None
    vocab = anatomy_of(adapter).vocab if has(adapter, "tokens") else None
    pairs = []
    for i, rec in enumerate(records):
        texts = [isinstance(rec[k], str) for k in KEYS]
        if any(texts):
            if not all(texts):
                raise DataError(f"pair {i}: give a, b and answer all as text or all as token ids")
            if tokenizer is None:
                raise UsageError(f"pair {i} is text but {adapter.spec} has no tokenizer: give token id lists")
            pair = encode_text(tokenizer, rec["a"], rec["b"], rec["answer"])
            pair = TokenPair(pair.a, pair.b, pair.answer, {**pair.meta, "text_a": rec["a"], "text_b": rec["b"],
                                                          "answer": rec["answer"]}, pair.prefix)
        else:
            prefix = rec.get("prefix", 0)
            if not isinstance(prefix, int) or not 0 <= prefix < min(len(rec["a"]), len(rec["b"]) + 1):
                raise DataError(f"pair {i}: prefix must be an integer from 0 to the shorter prompt's length - 1")
            pair = TokenPair(tuple(rec["a"]), tuple(rec["b"]), tuple(rec["answer"]), {"answer_tokenization": "ids"},
                             prefix)
        for k, ids in (("a", pair.a), ("b", pair.b), ("answer", pair.answer)):
            if not ids:
                what = f"answer {rec['answer']!r} tokenises to no tokens" if k == "answer" else f"prompt {k} is empty"
                raise DataError(f"pair {i}: {what}")
            if vocab is not None and any(not 0 <= t < vocab for t in ids):
                raise DataError(f"pair {i}: token ids of {k} must be in 0-{vocab - 1}")
        pairs.append(pair)
    return pairs


def encode_text(tokenizer, a: str, b: str, answer: str) -> TokenPair:
    """Tokenise one text pair (see the module docstring for how the answer's tokens are found).
    Special tokens both prompts start with (a BOS) are the pair's ``prefix``, aligned at the start."""
    ids_a, ids_b = _ids(tokenizer, a), _ids(tokenizer, b)
    special, prefix = set(getattr(tokenizer, "all_special_ids", ()) or ()), 0
    while prefix < min(len(ids_a), len(ids_b)) - 1 and ids_a[prefix] == ids_b[prefix] and ids_a[prefix] in special:
        prefix += 1
    in_a, in_b = _answer_in_context(tokenizer, a, ids_a, answer), _answer_in_context(tokenizer, b, ids_b, answer)
    if in_a and in_a == in_b:
        return TokenPair(ids_a, ids_b, in_a, {"answer_tokenization": "context"}, prefix)
    return TokenPair(ids_a, ids_b, _ids(tokenizer, answer, special=False), {"answer_tokenization": "separate"}, prefix)


def encode_prompt(tokenizer, prompt: str, answer: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One prompt's token ids and its answer's: the tokens of ``prompt + answer`` after the prompt's
    own when those are a prefix, else the answer tokenised alone (a token merged across the boundary)."""
    ids = _ids(tokenizer, prompt)
    return ids, _answer_in_context(tokenizer, prompt, ids, answer) or _ids(tokenizer, answer, special=False)


def _ids(tokenizer, text: str, special: bool = True) -> tuple[int, ...]:
    return tuple(int(t) for t in tokenizer(text, add_special_tokens=special)["input_ids"])


def _answer_in_context(tokenizer, prompt: str, ids: tuple[int, ...], answer: str) -> tuple[int, ...] | None:
    full = _ids(tokenizer, prompt + answer)
    return full[len(ids):] if full[:len(ids)] == ids and len(full) > len(ids) else None
