"""Chat backends: one interface for every Constitutional AI step, over a local model or any
OpenAI-compatible HTTP endpoint (vLLM, llama.cpp's server, Ollama, a hosted API, or
`rlhfkit serve-model`).

Two calls:
- `chat(conversations)`: one assistant reply to each list of chat messages;
- `choice_logprobs(texts, options)`: the log-probability of each option ("A", "B") as the
  very next token after each plain text. A local model reads it from its logits; an endpoint
  from the top log-probs of a one-token completion (an option outside them is None).

`open_backend("smollm2-135m-instruct")`, a model directory or a PPO policy directory gives a
`LocalBackend`; `open_backend("http://host:port/v1", model=...)` an `EndpointBackend`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

from rlhfkit.errors import RlhfkitError

Messages = list[dict[str, str]]


class BackendError(RlhfkitError):
    """A backend that cannot answer: unreachable, too slow, or answering nonsense."""


@dataclass
class Generated:
    text: str
    finish_reason: str  # "stop" (ended by itself) or "length" (cut at max_tokens)
    tokens: list[str]  # the generated tokens, as text
    logprobs: list[float]  # each generated token's log-probability
    top_logprobs: list[dict[str, float]]  # at each step, the most likely tokens


class ChatBackend(Protocol):
    name: str

    def chat(
        self,
        conversations: Sequence[Messages],
        max_tokens: int = 128,
        temperature: float = 0.7,
        seed: int = 0,
    ) -> list[str]: ...

    def choice_logprobs(
        self, texts: Sequence[str], options: Sequence[str] = ("A", "B")
    ) -> list[dict[str, float | None]]: ...


# --- a local model ------------------------------------------------------------------------


class LocalBackend:
    """A Hugging Face causal LM on this machine: a packaged short name, a model directory, a
    hub id in the local cache, or a policy directory rlhfkit trained (its adapter merged).
    Calls are serialised: one model, one batch at a time."""

    def __init__(self, model: str, batch_size: int = 8, device: str | None = None):
        from rlhfkit.models.stack import load_policy_model

        self.name = str(model)
        self.model, self.tokenizer = load_policy_model(self.name)
        if device:
            self.model.to(device)
        self.batch_size = batch_size
        self.lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chat_text(self, messages: Messages) -> str:
        """The conversation in the model's chat template, ready for the assistant's turn."""
        if not self.tokenizer.chat_template:
            raise BackendError(f"{self.name} has no chat template; it cannot hold a chat")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def chat(self, conversations, max_tokens=128, temperature=0.7, seed=0) -> list[str]:
        texts = [self.chat_text(m) for m in conversations]
        return [g.text for g in self.generate(texts, max_tokens, temperature, seed=seed)]

    @torch.no_grad()
    def generate(
        self,
        texts: Sequence[str],
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int = 0,
        top_logprobs: int = 0,
        special_tokens: bool = False,
        logprobs: bool = False,
    ) -> list[Generated]:
        """A continuation of each text (chat texts hold their special tokens already; raw
        text gets the tokenizer's with `special_tokens`), in batches; with `logprobs`, each
        generated token's log-probability under the model's own distribution (before
        temperature) and the `top_logprobs` likeliest tokens at each step."""
        from rlhfkit.generation import stop_token_ids, truncate_after_eos
        from rlhfkit.models.packed import prepacked_linears

        logprobs = logprobs or top_logprobs > 0
        out: list[Generated] = []
        with self.lock:
            torch.manual_seed(seed)
            stops = stop_token_ids(self.model, self.tokenizer)
            for start in range(0, len(texts), self.batch_size):
                batch = self._encode(texts[start : start + self.batch_size], special_tokens)
                sampling = (
                    dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
                    if temperature > 0
                    else dict(do_sample=False)
                )
                with prepacked_linears(self.model, len(batch["input_ids"])):
                    result = self.model.generate(
                        **batch,
                        max_new_tokens=max_tokens,
                        eos_token_id=stops,
                        pad_token_id=self.tokenizer.pad_token_id,
                        return_dict_in_generate=True,
                        output_logits=logprobs,
                        **sampling,
                    )
                new = result.sequences[:, batch["input_ids"].shape[1] :]
                tokens, mask, finished = truncate_after_eos(new, stops, self.tokenizer.pad_token_id)
                steps = torch.stack(result.logits, 1).float().log_softmax(-1) if logprobs else None
                for row in range(len(tokens)):
                    ids = tokens[row, : int(mask[row].sum())].tolist()
                    own = steps[row, : len(ids)] if logprobs else None
                    out.append(
                        Generated(
                            text=self.tokenizer.decode(ids, skip_special_tokens=True),
                            finish_reason="stop" if finished[row] else "length",
                            tokens=[self.tokenizer.decode([i]) for i in ids],
                            logprobs=[float(own[t, i]) for t, i in enumerate(ids)]
                            if logprobs
                            else [],
                            top_logprobs=[self._top(step, top_logprobs) for step in own]
                            if top_logprobs
                            else [],
                        )
                    )
        return out

    def _encode(self, texts: Sequence[str], special_tokens: bool):
        self.tokenizer.padding_side = "left"
        return self.tokenizer(
            list(texts), return_tensors="pt", padding=True, add_special_tokens=special_tokens
        ).to(self.device)

    def _top(self, logprobs: torch.Tensor, k: int) -> dict[str, float]:
        values, ids = logprobs.topk(k)
        return {
            self.tokenizer.decode([i]): float(v)
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        }

    def option_ids(self, options: Sequence[str]) -> list[int]:
        ids = []
        for option in options:
            encoded = self.tokenizer.encode(option, add_special_tokens=False)
            if len(encoded) != 1:
                raise BackendError(f"'{option}' is not one token for {self.name}")
            ids.append(encoded[0])
        return ids

    @torch.no_grad()
    def choice_logprobs(self, texts, options=("A", "B")) -> list[dict[str, float | None]]:
        """log P(option | text) for each option, the next token after each text, read from
        the logits of one forward pass (raw text: the tokenizer's special tokens added)."""
        ids = self.option_ids(options)
        out = []
        with self.lock:
            for start in range(0, len(texts), self.batch_size):
                batch = self._encode(texts[start : start + self.batch_size], special_tokens=True)
                logits = self.model(**batch).logits[:, -1].float().log_softmax(-1)
                for row in logits:
                    out.append({o: float(row[i]) for o, i in zip(options, ids, strict=True)})
        return out


# --- an OpenAI-compatible endpoint -----------------------------------------------------------


class EndpointBackend:
    """Any OpenAI-compatible server, through the official `openai` client: requests sent
    `concurrency` at a time, each with a timeout and retried with exponential backoff."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 2,
        concurrency: int = 8,
        top_logprobs: int = 20,
    ):
        import openai

        self.base_url = base_url
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "unused",
            timeout=timeout,
            max_retries=retries,
        )
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.model = model or self._only_model()
        self.name = f"{self.model} at {base_url}"

    def _call(self, what: str, function, *args, **kwargs):
        """One request; any failure becomes a one-line BackendError."""
        import openai

        try:
            return function(*args, **kwargs)
        except openai.APITimeoutError:
            raise BackendError(f"{self.base_url}: {what} timed out") from None
        except openai.APIConnectionError:
            raise BackendError(f"{self.base_url}: cannot connect for {what}") from None
        except openai.APIStatusError as e:
            raise BackendError(
                f"{self.base_url}: {what} answered HTTP {e.status_code}: {_first_line(e.message)}"
            ) from None
        except (openai.APIError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise BackendError(f"{self.base_url}: {what} gave a malformed answer ({e})") from None

    def _only_model(self) -> str:
        models = self._call("listing models", lambda: [m.id for m in self.client.models.list()])
        if len(models) != 1:
            raise BackendError(
                f"{self.base_url} serves {len(models)} models ({', '.join(models[:5])}): "
                "name one with --endpoint-model"
            )
        return models[0]

    def _map(self, function, items: Sequence) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(function, items))

    def chat(self, conversations, max_tokens=128, temperature=0.7, seed=0) -> list[str]:
        def one(messages: Messages) -> str:
            answer = self._call(
                "a chat completion",
                self.client.chat.completions.create,
                model=self.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
            content = self._call("a chat completion", lambda: answer.choices[0].message.content)
            if not isinstance(content, str):
                raise BackendError(f"{self.base_url}: a chat completion came back without text")
            return content

        return self._map(one, conversations)

    def choice_logprobs(self, texts, options=("A", "B")) -> list[dict[str, float | None]]:
        def one(text: str) -> dict[str, float | None]:
            answer = self._call(
                "a one-token completion",
                self.client.completions.create,
                model=self.model,
                prompt=text,
                max_tokens=1,
                temperature=0,
                logprobs=self.top_logprobs,
            )
            logprobs = self._call("a completion", lambda: answer.choices[0].logprobs)
            if logprobs is None or not logprobs.top_logprobs:
                raise BackendError(
                    f"{self.base_url} returned no logprobs for {self.model}: the judge reads "
                    "its choice from them (vLLM, llama.cpp's server and rlhfkit serve-model "
                    "return them)"
                )
            return option_logprobs(logprobs.top_logprobs[0], options)

        return self._map(one, texts)


def option_logprobs(top: dict[str, float], options: Sequence[str]) -> dict[str, float | None]:
    """Each option's log-probability among an endpoint's top tokens (the token itself, or with
    surrounding spaces, whichever is likelier); None when it is not among them."""
    found: dict[str, float | None] = {}
    for option in options:
        values = [lp for token, lp in top.items() if token.strip() == option]
        found[option] = max(values) if values else None
    return found


def _first_line(text: str) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else "no message"


def open_backend(
    spec: str,
    model: str | None = None,
    batch_size: int = 8,
    concurrency: int = 8,
    timeout: float = 60.0,
    api_key_env: str = "OPENAI_API_KEY",
) -> ChatBackend:
    """A backend by spec: an http(s) URL is an endpoint (`model` names the model it serves,
    else the one it lists); anything else is a local model (read `batch_size` at a time)."""
    if spec.startswith(("http://", "https://")):
        return EndpointBackend(
            spec, model, api_key_env=api_key_env, timeout=timeout, concurrency=concurrency
        )
    return LocalBackend(spec, batch_size=batch_size)
