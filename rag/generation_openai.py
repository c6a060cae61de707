"""The generator on a server: any OpenAI-compatible ``/v1/chat/completions`` over HTTP.

llama.cpp's server, vLLM, Ollama or llama-cpp-python's server (``python -m llama_cpp.server``)
run the model; this backend sends them the same chat messages the in-process backends
render themselves (the server applies the model's own chat template), greedy, and reads
the reply as Server-Sent Events.

What a server gives depends on the server, and each gap is said where it is met:

- ``start_probability`` comes from the reply's ``top_logprobs``; a server that returns
  none makes it None, and the pipeline then reads all passages at once (``rag.pipeline``).
- barring a reply's first token (``avoid``) needs the token ids, so it needs the server's
  tokenize endpoint (llama.cpp and vLLM: ``/tokenize``; llama-cpp-python: ``/extras/tokenize``);
  without one the model may still write NOT FOUND, which the pipeline turns into a refusal.
- ``count_tokens`` uses that endpoint too, else estimates 4 characters a token.
- no passage states are kept here (``keep_state`` is False); a server's own prefix cache
  (llama.cpp's ``cache_prompt``, vLLM's automatic prefix caching) is what reuses prompts.

A server that cannot be reached, or answers 502/503/504, is retried with backoff; then,
or when it stops answering for ``timeout_s``, ``UnreachableError`` (the API's 503 with
Retry-After, the CLI's exit 2). httpx is imported with this module, which
``load_generator`` imports only when ``RAG_GENERATOR=openai``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx

from rag.errors import InputError, ModelError, RagError, UnreachableError
from rag.generation import NO_VARIANTS, YES_VARIANTS, Message, start_token_ids

log = logging.getLogger(__name__)

#: Alternatives asked for with the first reply token. 20 is the most OpenAI's API and vLLM
#: (its default --max-logprobs) give; beyond the top 20 the mass is rarely above 1e-3.
TOP_LOGPROBS = 20
#: The bias that bars a token. -100 is the lowest OpenAI's API accepts (vLLM and llama.cpp
#: take it too); e^-100 makes a token as impossible under greedy decoding as the
#: in-process backend's -1e4.
BAR = -100.0
#: Reaching a server: a loopback or LAN server accepts in milliseconds; a long wait here
#: means it is gone, and the retries should begin rather than wait RAG_GENERATOR_TIMEOUT_S.
CONNECT_TIMEOUT_S = 5.0
#: What /ready waits for the server's model list: a probe, not an answer.
READY_TIMEOUT_S = 5.0
#: Statuses a server gives while it starts, restarts or sheds load (llama.cpp: 503 "Loading model").
RETRY_STATUSES = frozenset({502, 503, 504})
#: How servers that cannot give logprobs refuse a request for them: llama-cpp-python's server started
#: with --logits_all False answers 500 ("logprobs is not supported ..."; seen here), and a request
#: validator that does not take the fields answers 400 or 422.
LOGPROB_REFUSALS = frozenset({400, 422, 500})
#: Failures before a server answered anything: safe to send again.
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: Sampling that makes every server greedy and plain: temperature 0 is greedy on llama.cpp, vLLM
#: and Ollama, and llama-cpp-python's server would otherwise apply its default repeat_penalty 1.1,
#: which the in-process backend does not. ``cache_prompt`` keeps llama.cpp's server reusing the
#: previous prompt's KV cache (its default in recent versions); the others ignore both extras.
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "cache_prompt": True}


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each Server-Sent Event in ``lines``, up to ``[DONE]``.

    Comments (``: ping``) and other fields are skipped; an event's data lines are joined by newlines.
    An event the stream ends inside of (no blank line after it) is dropped, as the SSE spec says:
    it is what a server that died mid-write leaves.

    >>> list(sse_data(["data: {\\"a\\": 1}", "", ": ping", "event: x", "data: b", "data: c", "", "data: [DONE]", "x"]))
    ['{"a": 1}', 'b\\nc']
    """
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                data = []
                if payload == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)


def top_logprobs(data: Any) -> list[tuple[str, float]] | None:
    """(token text, logprob) of the first reply token's alternatives; None when the server sent none.

    >>> top_logprobs({"choices": [{"logprobs": {"content": [{"token": "A", "logprob": -0.1,
    ...     "top_logprobs": [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.4}]}]}}]})
    [('A', -0.1), ('B', -2.4)]
    >>> top_logprobs({"choices": [{"logprobs": None}]}) is None
    True
    """
    try:
        first = data["choices"][0]["logprobs"]["content"][0]
        entries = first.get("top_logprobs") or [first]
        return [(str(e["token"]), float(e["logprob"])) for e in entries]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def visible_mass(entries: Sequence[tuple[str, float]], counts: Callable[[str], bool]) -> float:
    """Probability mass of the entries whose token text ``counts``.

    Only the top entries are visible, so this is a lower bound of the true mass: it misses
    at most the mass outside the top N (1 - the sum of all N), and a token outside the top N
    has less probability than the N-th. With N = 20 both are tiny for a confident model.

    >>> round(visible_mass([("NOT", math.log(0.7)), (" NOT", math.log(0.1)), ("The", math.log(0.2))],
    ...                    lambda t: t.strip() == "NOT"), 4)
    0.8
    """
    return sum(math.exp(lp) for token, lp in entries if counts(token))


def starts(text: str) -> Callable[[str], bool]:
    """Without the tokenizer: a token counts when it is a non-blank start of ``text`` (bare or after a space).

    A superset of ``text``'s own first tokens ("N" and "NO" count for "NOT FOUND"); their
    mass is what a model that starts spelling the reply another way puts there, tiny in practice.

    >>> [t for t in ["NOT", " NOT", "N", "NOTE", " ", "Yes"] if starts("NOT FOUND")(t)]
    ['NOT', ' NOT', 'N']
    """
    return lambda token: bool(token.strip()) and (text.startswith(token) or (" " + text).startswith(token))


def _server_message(response: httpx.Response) -> str:
    """The reason a server gives in an error body (OpenAI's ``error.message``, FastAPI's ``detail``), short."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        for key in ("error", "detail", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


class OpenAIGenerator:
    """A model behind an OpenAI-compatible server (see the module docstring for what each server gives).

    Nothing is asked of the server until the first call, so a service can start before its
    model server does; ``check_ready`` is what /ready asks. Thread-safe: httpx's client is,
    and what is learned about the server (model name, tokenizer) is found once under a lock.
    """

    keeps_states = False  # the server's own prefix cache reuses prompt starts; nothing is kept here

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        seed: int = 0,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise InputError(f"RAG_GENERATOR_URL={base_url!r} is not an http(s) URL; e.g. http://127.0.0.1:8080/v1.")
        if url.userinfo:
            raise InputError("RAG_GENERATOR_URL holds a user or password; put the key in RAG_GENERATOR_API_KEY.")
        self.url = str(url)
        #: The server's root, where llama.cpp and vLLM serve /tokenize beside /v1.
        self._root = self.url.removesuffix("/v1")
        self._where = f"{url.host}:{url.port}" if url.port else url.host
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.seed = seed
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            transport=transport,
        )
        self._model = model
        #: ``openai:<model>@<host:port>``, the model as the server names it ("?" until it is known).
        self.id = f"openai:{model or '?'}@{self._where}"
        self._lock = threading.Lock()
        #: (tokenize path, detokenize path) once found; () when the server has none; None until asked.
        self._tokenizer: tuple[str, str] | tuple[()] | None = None
        self._prefix: list[int] = []  # ids the tokenize endpoint puts before any text (a BOS), to strip
        self._start: dict[str, list[int]] = {}  # first-token ids of a reply, by reply
        self._pieces: dict[str, frozenset[str]] = {}  # their texts
        self._logprobs: bool | None = None  # does the server return them? None until seen
        self._refusal_logged = False
        self.last_prompt_tokens = 0
        self.last_completion_tokens = 0

    # ------------------------------------------------------------------ the server

    def close(self) -> None:
        """Close httpx's connection pool to the model server (a second call does nothing)."""
        self._client.close()

    def _unreachable(self, exc: Exception) -> UnreachableError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return UnreachableError(
                f"The model server at {self.url} sent nothing for {self.timeout_s:g} s "
                "(RAG_GENERATOR_TIMEOUT_S); it may be overloaded. Retry later."
            )
        reason = str(exc) or type(exc).__name__
        return UnreachableError(
            f"The model server at {self.url} cannot be reached ({reason}); start it or fix RAG_GENERATOR_URL, "
            "then retry."
        )

    def _refused(self, response: httpx.Response) -> RagError:
        """The error for a status the server answered with (after any retries)."""
        status, why = response.status_code, _server_message(response)
        where = f"The model server at {self.url}"
        if status in RETRY_STATUSES:
            return UnreachableError(f"{where} is unavailable ({status}: {why}); retry later.")
        if status in (401, 403):
            return ModelError(f"{where} refused the key ({status}); set RAG_GENERATOR_API_KEY to a key it accepts.")
        if status == 404:
            model = (
                f" (RAG_GENERATOR_SERVER_MODEL, now {self._model!r}, must be one of its models)" if self._model else ""
            )
            return ModelError(f"{where} answered 404 ({why}): RAG_GENERATOR_URL should end in /v1{model}.")
        if status in (400, 413, 422):
            # Mostly a prompt longer than the server's context, which is the question's or the settings' to fix.
            return InputError(
                f"{where} refused the request ({status}: {why}). If the prompt is too long, ask a shorter "
                "question or use fewer passages (RAG_TOP_K)."
            )
        return ModelError(f"{where} failed ({status}: {why}).")

    def _send(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        stream: bool = False,
        retries: int | None = None,
        timeout: float | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send with retries on what a server that is (re)starting does; a 2xx response or a ``RagError``.

        With ``stream`` the body is left unread (the caller closes the response). A status in
        ``accept`` is returned too, for the caller to judge.
        """
        attempts = 1 + (self.retries if retries is None else retries)
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                request = self._client.build_request(method, url, json=body, **extra)
                response = self._client.send(request, stream=stream)
            except RETRY_ERRORS as exc:
                if attempt + 1 < attempts:
                    log.info("model server %s: %s; retrying", self.url, exc)  # the error, if it lasts, says it all
                    continue
                raise self._unreachable(exc) from exc
            except httpx.HTTPError as exc:  # a read timeout: the server took the request and went silent
                raise self._unreachable(exc) from exc
            if response.is_success or (response.status_code in accept and not stream):
                return response
            if stream:
                response.read()  # the error body, for its message
                response.close()
            if response.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                log.info("model server %s answered %d; retrying", self.url, response.status_code)
                continue
            raise self._refused(response)
        raise AssertionError("unreachable: the loop returns or raises")

    def _json(self, method: str, url: str, body: Any = None, **kwargs: Any) -> Any:
        return self._parse(self._send(method, url, body, **kwargs), url)

    def _parse(self, response: httpx.Response, url: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ModelError(f"The model server at {self.url} answered {url} with something that is not JSON.") from exc

    def model(self, *, retries: int | None = None, timeout: float | None = None) -> str:
        """The model to ask for: RAG_GENERATOR_SERVER_MODEL, else the first the server lists."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                listed = self._json("GET", "models", retries=retries, timeout=timeout)
                try:
                    self._model = str(listed["data"][0]["id"])
                    self.id = f"openai:{self._model}@{self._where}"
                except (KeyError, IndexError, TypeError) as exc:
                    raise ModelError(
                        f"The model server at {self.url} lists no model; set RAG_GENERATOR_SERVER_MODEL."
                    ) from exc
            return self._model

    def check_ready(self) -> None:
        """Ask the server for its models, once and briefly: ``UnreachableError`` when it is down."""
        if self._model is None:
            self.model(retries=0, timeout=READY_TIMEOUT_S)
        else:
            self._send("GET", "models", retries=0, timeout=READY_TIMEOUT_S)

    # ------------------------------------------------------------------ tokens

    def _find_tokenizer(self) -> tuple[str, str] | tuple[()]:
        """The server's (tokenize, detokenize) paths, tried once: llama.cpp / vLLM, then llama-cpp-python."""
        if self._tokenizer is not None:
            return self._tokenizer
        with self._lock:
            if self._tokenizer is None:
                found: tuple[str, str] | tuple[()] = ()
                for pair in (
                    (f"{self._root}/tokenize", f"{self._root}/detokenize"),
                    (f"{self._root}/extras/tokenize", f"{self._root}/extras/detokenize"),
                ):
                    try:
                        self._prefix = self._tokenize(pair[0], "")
                    except (InputError, ModelError):
                        continue  # 404/405, or 400/422 from an endpoint by that name that wants other fields
                    found = pair
                    break
                else:
                    log.warning(
                        "the model server at %s has no tokenize endpoint: token counts are estimated and a "
                        "ruled-out reply cannot be barred",
                        self.url,
                    )
                self._tokenizer = found
            return self._tokenizer

    def _tokenize(self, path: str, text: str) -> list[int]:
        # One body for every server: llama.cpp reads content/add_special, vLLM prompt/add_special_tokens/model,
        # llama-cpp-python input; each ignores the others' fields.
        body = {"content": text, "add_special": False, "prompt": text, "add_special_tokens": False, "input": text}
        if self._model is not None:
            body["model"] = self._model
        data = self._json("POST", path, body, retries=0 if self._tokenizer is None else None)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise ModelError(f"{path} answered without a token list")
        # with_pieces-style entries ({"id": ..}) or plain ids
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def _encode(self, text: str) -> list[int] | None:
        """Token ids of ``text`` (no BOS), or None when the server cannot tokenize."""
        paths = self._find_tokenizer()
        if not paths:
            return None
        ids = self._tokenize(paths[0], text)
        n = len(self._prefix)
        return ids[n:] if n and ids[:n] == self._prefix else ids

    def _decode(self, ids: Sequence[int]) -> str | None:
        paths = self._find_tokenizer()
        if not paths:
            return None
        body: dict[str, Any] = {"tokens": list(ids)}
        if self._model is not None:
            body["model"] = self._model
        try:
            data = self._json("POST", paths[1], body)
        except (InputError, ModelError):
            return None
        for key in ("content", "text", "prompt"):  # llama.cpp, llama-cpp-python, vLLM
            if isinstance(data, dict) and isinstance(data.get(key), str):
                return str(data[key])
        return None

    def _start_ids(self, text: str) -> list[int] | None:
        """First token ids of ``text``, bare and after a space (``start_token_ids``); None without a tokenizer.

        Remembered: every answer bars NOT FOUND, and the ids never change while the server runs its model.
        """
        if text not in self._start:
            if not self._find_tokenizer():
                return None
            self._start[text] = start_token_ids(lambda variant: self._encode(variant) or [], text)
        return self._start[text]

    def _counts(self, text: str) -> Callable[[str], bool]:
        """Which first-token texts count as starting ``text``: exactly its first tokens' texts, if known."""
        if text not in self._pieces:
            ids = self._start_ids(text)
            pieces = [self._decode([i]) for i in ids] if ids is not None else None
            if pieces is None or any(p is None for p in pieces):
                return starts(text)
            self._pieces[text] = frozenset(p for p in pieces if p is not None)
        exact = self._pieces[text]
        return lambda token: token in exact

    def count_tokens(self, text: str) -> int:
        """The server's own count when it tokenizes; else an estimate of 4 characters a token."""
        if not text:
            return 0
        ids = self._encode(text)
        return len(ids) if ids is not None else max(1, math.ceil(len(text) / 4))

    # ------------------------------------------------------------------ generation

    def _body(self, messages: Sequence[Message], max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model(),
            "messages": list(messages),
            "max_tokens": max_tokens,
            "seed": self.seed,
            **GREEDY,
        }

    def stream(self, messages: Sequence[Message], *, max_tokens: int, avoid: str = "") -> Iterator[str]:
        body = {**self._body(messages, max_tokens), "stream": True, "stream_options": {"include_usage": True}}
        if avoid:
            ids = self._start_ids(avoid)
            if ids:
                body["logit_bias"] = {str(i): BAR for i in ids}
        self.last_prompt_tokens = self.last_completion_tokens = 0
        response = self._send("POST", "chat/completions", body, stream=True)
        pieces = 0
        finished = False
        try:
            for payload in sse_data(response.iter_lines()):
                try:
                    chunk = json.loads(payload)
                except ValueError as exc:
                    raise ModelError(f"The model server at {self.url} streamed something that is not JSON.") from exc
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise ModelError(f"The model server at {self.url} failed mid-reply: {chunk['error']}")
                usage = chunk.get("usage") if isinstance(chunk, dict) else None
                if isinstance(usage, dict):
                    self.last_prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    pieces = int(usage.get("completion_tokens") or pieces)
                for choice in chunk.get("choices") or ():
                    finished = finished or bool(choice.get("finish_reason"))
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        pieces += 1
                        yield text
            if not finished:
                # Every server ends a reply with a finish_reason; a stream that closes before it
                # is a server that went away mid-reply (killed, restarted, out of memory).
                raise UnreachableError(f"The model server at {self.url} closed the stream mid-reply; retry later.")
        except httpx.HTTPError as exc:
            # Part of the reply may have gone out already: no retry, the caller decides.
            raise self._unreachable(exc) from exc
        finally:
            response.close()
            self.last_completion_tokens = pieces

    def _first_token(self, messages: Sequence[Message]) -> list[tuple[str, float]] | None:
        """The first reply token's top alternatives, or None when the server gives no logprobs."""
        if self._logprobs is False:
            return None
        body = {**self._body(messages, 1), "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        response = self._send("POST", "chat/completions", body, accept=LOGPROB_REFUSALS)
        if not response.is_success:
            # Some servers refuse the logprobs fields rather than ignore them. Not remembered: the
            # same status can mean a prompt too long for the server, which the answer's own
            # request then reports; a server that refuses them costs one quick failure a question.
            if not self._refusal_logged:
                log.warning(
                    "the model server at %s refused a request for logprobs (%d: %s); reading without them",
                    self.url,
                    response.status_code,
                    _server_message(response),
                )
                self._refusal_logged = True
            return None
        entries = top_logprobs(self._parse(response, "chat/completions"))
        if entries is None and self._logprobs is None:
            log.warning(
                "the model server at %s returns no logprobs: refusals rest on the model writing NOT FOUND "
                "and on verification (README: the model on any OpenAI-compatible server)",
                self.url,
            )
        self._logprobs = entries is not None
        return entries

    def start_probability(self, messages: Sequence[Message], text: str) -> float | None:
        """P(the reply starts with ``text``), from the top-20 alternatives of its first token (a lower bound,
        see ``visible_mass``); None when the server returns no logprobs."""
        entries = self._first_token(messages)
        if entries is None:
            return None
        return visible_mass(entries, self._counts(text))

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("Yes") against P("No") among the first token's top alternatives (0.5 when neither is among them)."""
        entries = self._first_token(messages)
        if entries is None:
            raise ModelError(
                f"The model server at {self.url} returns no logprobs, which RAG_RERANKER=judge needs; "
                "use another reranker or a server that returns them."
            )
        yes = visible_mass(entries, lambda t: t in YES_VARIANTS)
        no = visible_mass(entries, lambda t: t in NO_VARIANTS)
        return yes / (yes + no) if yes + no > 0 else 0.5

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        """Nothing is kept on this side: the server's own prefix cache is what reuses a prompt's start."""
        return False
