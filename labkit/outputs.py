"""What the engine hands back: request outputs (shaped like vLLM's), incremental text and stop strings.

Each unfinished request has one `RequestText`: it turns sampled token ids into text as they come
(an incremental detokenizer), looks for the request's stop strings in the new text, and cuts the
text before the first one found. `RequestText.output(request, ...)` packs the state into a
`RequestOutput`; its `delta_text` is what was added since the previous output (for streaming).

Streaming holds text back: while a request has stop strings, the last len(longest stop) - 1
characters are not handed out yet, since they might be the start of a stop string that will be cut
away. Joined, the deltas equal the final text.

The tokens, times and finish reason live on the scheduler's `Request` (labkit.scheduler); this module
only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.metrics import RequestMetrics
from labkit.scheduler import Request


@dataclass
class CompletionOutput:
    index: int
    text: str  # stop string (if any) cut off; special tokens left out
    token_ids: list[int]  # every sampled token, the EOS or stop token included
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it, if any


@dataclass
class RequestOutput:
    """What `step()` returns for a request that made progress, shaped like vLLM's."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    delta_text: str = ""  # text added since this request's previous output (for streaming)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


class _PrefixDetokenizer:
    """Incremental decode for a tokenizer without one: decode everything, emit what is new and whole."""

    def __init__(self, tokenizer: Any, skip_special: bool):
        self.tokenizer, self.skip_special, self.ids, self.emitted = tokenizer, skip_special, [], 0

    def feed(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special)
        if text.endswith("\ufffd"):  # a character still incomplete: wait for its other bytes
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special)
        new, self.emitted = text[self.emitted :], len(text)
        return new


def new_detokenizer(tokenizer: Any | None, skip_special: bool) -> Any | None:
    """labkit's IncrementalDetokenizer for labkit's Tokenizer, a decode-the-prefix one otherwise."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "decode_bytes"):  # labkit's Tokenizer
        from labkit.tokenizer import IncrementalDetokenizer

        return IncrementalDetokenizer(tokenizer, skip_special=skip_special)
    return _PrefixDetokenizer(tokenizer, skip_special)


def find_stop_string(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    """(index, stop) of the earliest stop string in text[start:], or None."""
    hits = [(text.find(s, start), s) for s in stops]
    hits = [(i, s) for i, s in hits if i >= 0]
    return min(hits) if hits else None


class RequestText:
    """The text of one request so far, with its stop strings applied."""

    def __init__(self, prompt: str | None, stops: list[str], detokenizer: Any | None):
        self.prompt, self.stops, self.detokenizer = prompt, stops, detokenizer
        self.text = ""  # decoded so far (cut before a stop string once one is found)
        self.emitted = 0  # characters of `text` already handed out as delta_text
        self.stop_string: str | None = None

    def append(self, token_id: int, last: bool) -> str | None:
        """Decode one more token (`last`: no more will come); the stop string it completes, if any."""
        if self.detokenizer is None or self.stop_string is not None:
            return None
        self.text += self.detokenizer.feed(token_id) + (self.detokenizer.flush() if last else "")
        if not self.stops:
            return None
        start = max(0, self.emitted - max(map(len, self.stops)))  # only new text can complete a stop
        hit = find_stop_string(self.text, self.stops, start)
        if hit is not None:
            self.text, self.stop_string = self.text[: hit[0]], hit[1]
        return self.stop_string

    def output(self, request: Request, finished: bool) -> RequestOutput:
        """The request's output now; its delta is the text not handed out before."""
        holdback = max(map(len, self.stops), default=1) - 1  # may still begin a stop string
        visible = len(self.text) if finished else max(self.emitted, len(self.text) - holdback)
        delta, self.emitted = self.text[self.emitted : visible], visible
        reason = request.finish_reason.value if finished and request.finish_reason else None
        completion = CompletionOutput(
            0,
            self.text[:visible],
            list(request.output_token_ids),
            reason or ("stop" if finished else None),
            request.stop_reason if finished else None,
        )
        return RequestOutput(
            request.request_id,
            self.prompt,
            request.prompt_token_ids,  # shared, not copied: nothing changes a prompt once queued
            [completion],
            finished,
            RequestMetrics(request),
            delta,
        )


__all__ = ["CompletionOutput", "RequestOutput", "RequestText", "find_stop_string", "new_detokenizer"]
