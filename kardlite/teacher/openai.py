"""Any OpenAI-compatible chat endpoint as a teacher: OpenAI, vLLM, Ollama, a llama.cpp server.

Retries are ours, not the client's (``max_retries=0``), so they are explicit and testable: 429, 408, 409, 5xx,
timeouts and dropped connections are retried with exponential back-off and full jitter, and a ``Retry-After``
(or ``retry-after-ms``) header, when present, is waited out exactly. 401/403/404, a refused model name and
malformed responses fail at once with one clear line.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from typing import Any

from kardlite.errors import MissingExtraError
from kardlite.teacher.base import Sample, Teacher, TeacherError

RETRY_STATUS = {408, 409, 429}
MAX_RETRY_AFTER_S = 300.0


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAITeacher(Teacher):
    """A chat-completions endpoint.

    Args:
        model: model name; default ``$KARDLITE_TEACHER_MODEL``.
        base_url: endpoint root (``.../v1``); default ``$OPENAI_BASE_URL``, else OpenAI.
        api_key: default ``$OPENAI_API_KEY``; local servers that need none get a placeholder.
        temperature, max_tokens, top_p, seed: sampling settings.
        concurrency: requests in flight at once (a thread pool).
        max_retries: retries per request for transient failures.
        backoff: first back-off in seconds (doubles each retry, full jitter, capped at ``max_backoff``).
        timeout: seconds per request.
    """

    backend = "openai"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 temperature: float = 1.0, max_tokens: int = 256, top_p: float = 1.0, seed: int | None = None,
                 concurrency: int = 4, max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 timeout: float = 120.0) -> None:
        try:
            import openai
        except ImportError:
            raise MissingExtraError("openai", "teacher") from None
        model = model or os.environ.get("KARDLITE_TEACHER_MODEL")
        if not model:
            raise TeacherError("no teacher model: pass --model or set KARDLITE_TEACHER_MODEL")
        super().__init__(model, temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed,
                         concurrency=concurrency)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if base_url is None:
                raise TeacherError("no API key for OpenAI: set OPENAI_API_KEY, or --base-url for a local server")
            api_key = "no-key"  # local servers without --api_key accept anything
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.base_url = str(self.client.base_url)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Some servers (llama.cpp's) ignore n and return one choice; after seeing that, ask one per call.
        self._n_per_call: int | None = None
        self._n_lock = threading.Lock()
        self._sleep = time.sleep

    # -- errors -------------------------------------------------------------------------------------------------
    def _fatal(self, err: Exception) -> TeacherError | None:
        """A TeacherError for failures that retrying cannot fix, else None."""
        o = self._openai
        url = self.base_url
        msg = getattr(err, "message", str(err))
        if isinstance(err, o.AuthenticationError):
            return TeacherError(f"{url} refused the API key (401): set OPENAI_API_KEY or --api-key ({msg})")
        if isinstance(err, o.PermissionDeniedError):
            return TeacherError(f"{url} denied access (403) to model {self.model!r}: {msg}")
        if isinstance(err, o.NotFoundError):
            return TeacherError(f"{url} answered 404: model {self.model!r} not found, or the base URL is wrong ({msg})")
        if isinstance(err, o.APIResponseValidationError | ValueError):
            return TeacherError(f"malformed response from {url}: {msg}")
        if isinstance(err, o.APIStatusError) and err.status_code not in RETRY_STATUS and err.status_code < 500:
            hint = " (is the model name right?)" if "model" in msg.lower() else ""
            return TeacherError(f"{url} rejected the request ({err.status_code}){hint}: {msg}")
        return None

    def _delay(self, err: Exception, attempt: int) -> float:
        response = getattr(err, "response", None)
        wait = _retry_after(getattr(response, "headers", None))
        if wait is not None:
            return min(wait, MAX_RETRY_AFTER_S)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _call(self, **kwargs: Any) -> Any:
        o = self._openai
        for attempt in range(self.max_retries + 1):
            try:
                return self.client.chat.completions.create(**kwargs)
            except (o.APIError, ValueError) as err:
                fatal = self._fatal(err)
                if fatal is not None:
                    raise fatal from None
                if attempt == self.max_retries:
                    if isinstance(err, o.APIConnectionError) and not isinstance(err, o.APITimeoutError):
                        raise TeacherError(f"cannot connect to the teacher at {self.base_url}: is the server running? "
                                           f"({err.__cause__ or err})") from None
                    status = getattr(err, "status_code", None) or type(err).__name__
                    raise TeacherError(f"{self.base_url} still failing after {self.max_retries} retries "
                                       f"({status}: {getattr(err, 'message', err)})") from None
                self._sleep(self._delay(err, attempt))
        raise AssertionError("unreachable")

    # -- the contract -------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast on a bad key, a dead server or a model the endpoint does not serve.

        The model list is only trusted when the endpoint offers one: llama.cpp's server answers any model name
        with its own model, so a wrong name would otherwise pass silently.
        """
        o = self._openai
        try:
            ids = [m.id for m in self.client.models.list()]
        except o.APIConnectionError as err:
            raise TeacherError(f"cannot connect to the teacher at {self.base_url}: is the server running? "
                               f"({err.__cause__ or err})") from None
        except o.AuthenticationError as err:
            raise self._fatal(err) from None  # type: ignore[misc]
        except (o.APIError, ValueError, TypeError, AttributeError):
            return  # no usable model list here: the first request will tell
        if ids and self.model not in ids:
            raise TeacherError(f"{self.base_url} does not serve model {self.model!r}; it serves {sorted(ids)[:10]}")

    def complete(self, messages: list[dict[str, str]], n: int, *, seed: int | None = None) -> list[Sample]:
        with self._n_lock:
            ask = n if self._n_per_call is None else min(n, self._n_per_call)
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "n": ask,
                                  "temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p}
        if seed is not None:
            kwargs["seed"] = seed
        resp = self._call(**kwargs)
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise TeacherError(f"malformed response from {self.base_url}: no 'choices' list ({str(resp)[:200]!r})")
        samples = []
        usage = getattr(resp, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        for i, choice in enumerate(choices):
            content = getattr(getattr(choice, "message", None), "content", None)
            if not isinstance(content, str):
                raise TeacherError(f"malformed response from {self.base_url}: choice {i} has no message content")
            # Usage is per request: the prompt is counted once, completion tokens spread over the choices.
            share = completion_tokens // len(choices) + (completion_tokens % len(choices) if i == 0 else 0)
            samples.append(Sample(content.strip(), getattr(choice, "finish_reason", None),
                                  prompt_tokens if i == 0 else 0, share))
        if ask > 1 and len(samples) < ask:
            with self._n_lock:
                self._n_per_call = len(samples)
        return samples[:ask]
