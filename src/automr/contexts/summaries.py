"""LM-written summaries for TRSR: batched greedy generation and an on-disk cache.

:class:`SummaryWriter` asks the *untuned* base model (a peft adapter, if present, is switched
off) for a reply to each instruction: wrapped in the tokenizer's chat template when it has one
(SmolLM2-Instruct does), else as plain text; left-padded batches through the split's exact
greedy decoding, so in float32 a batch writes the same text as one instruction at a time (in
bfloat16 or float16 padding changes the rounding, which can change a greedy reply).

:class:`SummaryCache` keeps replies in a JSON-lines file keyed by the sha256 of (model
fingerprint, ``max_new_tokens``, rendered prompt, stop tokens besides the EOS, dtype where it
is not float32), each with the digest of the prompt's token ids and the stop tokens (what the
tokenizer decides, which the fingerprint does not cover), appended batch by batch: reruns and
shared prompts cost nothing, and a cut run resumes where it stopped. Under a launcher
(:mod:`automr.distributed`) process R appends to its own file beside it
(``NAME.rank-R.jsonl``, never written by two processes at once); every reader reads them all.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from automr import distributed
from automr.data.prompts import encode_texts
from automr.errors import AutomrError
from automr.grounding.embedding import base_model
from automr.llm.decoding import greedy_generate
from automr.llm.split import HFSplitLLM
from automr.storage import append_lines


class SummaryWriter:
    """Greedy replies of ``model`` to instructions, at most ``max_new_tokens`` tokens each."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_new_tokens: int = 40,
                 batch_size: int = 8) -> None:
        if batch_size < 1 or max_new_tokens < 1:  # a batch of 0 or less wrote nothing, silently
            raise AutomrError(f"summaries need a batch size and a reply length of at least 1, "
                              f"got {batch_size} and {max_new_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def render(self, instruction: str) -> str:
        """The exact prompt text the model reads for ``instruction``."""
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False,
                add_generation_prompt=True)
        return f"{instruction}\n"

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Replies to rendered ``prompts`` (one batch), each on one line, whitespace collapsed."""
        tokenizer = self.tokenizer
        encoded = [self.encode(p) for p in prompts]
        width = max(map(len, encoded))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.bool)
        for row, seq in enumerate(encoded):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = True
        llm = HFSplitLLM(self.model)
        stops = self.stop_ids()
        with base_model(self.model):
            new = greedy_generate(llm, ids.to(llm.device), mask.to(llm.device), 0,
                                  self.max_new_tokens, eos_token_id=stops)
        replies = []
        for row in new.tolist():
            row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
            replies.append(" ".join(tokenizer.decode(row, skip_special_tokens=True).split()))
        return replies

    def encode(self, prompt: str) -> list[int]:
        """The token ids the model reads for a rendered ``prompt``."""
        return encode_texts(self.tokenizer, prompt, add_special_tokens=not self.chat,
                            split_special_tokens=False)["input_ids"]  # the template's tokens

    def reads(self, prompt: str) -> list[list[int]]:
        """What the model reads of ``prompt`` and where its reply ends: the prompt's token ids
        and the stop tokens. Both come from the tokenizer, which a model's fingerprint (its
        weights and config) does not cover."""
        return [self.encode(prompt), self.stop_ids()]

    def stop_ids(self) -> list[int]:
        """The tokens a reply ends at: the tokenizer's EOS and those of the model's generation
        config (as ``generate`` stops), where a chat model's end of turn is (Gemma's
        ``<end_of_turn>``, Phi-3's ``<|end|>``: no EOS of their tokenizers)."""
        config = getattr(self.model, "generation_config", None)
        given = getattr(config, "eos_token_id", None)
        ids = [self.tokenizer.eos_token_id,
               *([given] if isinstance(given, int) else list(given or ()))]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))


class SummaryCache:
    """Replies by prompt for one model, in ``path`` (JSON lines ``{"key", "summary"}``)."""

    def __init__(self, path: Path | str, model_fingerprint: str, max_new_tokens: int,
                 more_stops: Sequence[int] = (), dtype: str = "float32",
                 reads: Callable[[str], object] | None = None) -> None:
        self.path = Path(path)
        self.model_fingerprint, self.max_new_tokens = model_fingerprint, max_new_tokens
        self.more_stops = tuple(more_stops)
        """Stop tokens besides the tokenizer's EOS (a chat model's end of turn): they change
        the replies, and a generation config is not in the model's fingerprint."""
        self.dtype = dtype
        """The dtype the replies are written in (``"bfloat16"``): a reply in bfloat16 is not
        the float32 one, and a model's fingerprint is the same in every dtype."""
        self.reads = reads
        """What the model reads of a prompt (:meth:`SummaryWriter.reads`, JSON): its digest is
        written with each reply, and a reply written for other tokens (another tokenizer of
        the same weights) is not read back. Replies written without one (before it was
        recorded) are read for any."""
        self.entries: dict[tuple[str, str | None], str] = {}
        self._digests: dict[str, str] = {}
        self.reload()

    @property
    def files(self) -> list[Path]:
        """The cache file and the per-process files beside it."""
        parts = sorted(self.path.parent.glob(f"{self.path.stem}.rank-*.jsonl"))
        return [self.path, *parts]

    @property
    def write_path(self) -> Path:
        """Where this process appends: the cache file, or its own file under a launcher."""
        if distributed.world_size() == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank-{distributed.rank()}.jsonl")

    def reload(self) -> None:
        """Read every entry written so far (by any process) into :attr:`entries`; of two
        replies to one prompt, the earlier line (the cache file before the per-process ones)."""
        for path in self.files:
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries.setdefault((entry["key"], entry.get("reads")),
                                            entry["summary"])
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue  # a line cut by an interrupted write

    def key(self, prompt: str) -> str:
        """The sha256 hex digest of the model fingerprint, ``max_new_tokens``, ``prompt``, the
        stops besides the EOS where there are any and the dtype where it is not float32
        (float32 replies that stop at the EOS alone are keyed as before those two were)."""
        payload = json.dumps([self.model_fingerprint, self.max_new_tokens, prompt,
                              *([list(self.more_stops)] if self.more_stops else []),
                              *([self.dtype] if self.dtype != "float32" else [])])
        return hashlib.sha256(payload.encode()).hexdigest()

    def digest(self, prompt: str) -> str | None:
        """The sha256 hex digest of what the model reads of ``prompt`` (:attr:`reads`; None
        without it)."""
        if self.reads is None:
            return None
        if prompt not in self._digests:
            self._digests[prompt] = hashlib.sha256(
                json.dumps(self.reads(prompt)).encode()).hexdigest()
        return self._digests[prompt]

    def get(self, prompt: str) -> str | None:
        """The cached reply to ``prompt`` (as of the last :meth:`reload` or :meth:`add`) for
        what the model reads of it, or one written without that record, else None."""
        key, digest = self.key(prompt), self.digest(prompt)
        found = None if digest is None else self.entries.get((key, digest))
        return found if found is not None else self.entries.get((key, None))

    def add(self, prompts: Sequence[str], summaries: Sequence[str]) -> None:
        """Remember and append (one flush per call, so a cut run keeps finished batches); a
        prompt with a reply already keeps that one (the first written is the one read)."""
        lines = []
        for prompt, summary in zip(prompts, summaries, strict=True):
            key, digest = self.key(prompt), self.digest(prompt)
            if (key, digest) not in self.entries:
                self.entries[key, digest] = summary
                lines.append(json.dumps({"key": key, "summary": summary}
                                        | ({} if digest is None else {"reads": digest})))
        append_lines(self.write_path, lines)
