"""The LLM's settings: which OpenAI-compatible endpoint and model, the persona, limits.

Any server that speaks OpenAI's chat completions works: vLLM (`http://host:8000/v1`), Ollama
(`http://host:11434/v1`), DashScope's compatible mode
(`https://dashscope.aliyuncs.com/compatible-mode/v1`), OpenAI itself. Chat is enabled when both
`base_url` and `model` are set. The standard environment variables override the config file, in
`settings_from`; only `serve_app.py` reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly assistant who talks with the user through a talking avatar. Your replies are "
    "spoken aloud, so answer in a few short sentences of plain text in the user's language: no lists, "
    "markdown, code or emoji."
)

# environment variable -> field; set and non-empty, it wins over the config file
ENV_OVERRIDES = {"OPENAI_BASE_URL": "base_url", "OPENAI_API_KEY": "api_key", "LLM_MODEL": "model"}

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ENV_OVERRIDES", "LlmSettings", "settings_from"]


class LlmSettings(BaseModel):
    """How to reach the LLM and how to talk to it.

    Attributes:
        base_url: The endpoint's API root, up to and including `/v1` (or the provider's equivalent).
        model: The model name the server knows (`Qwen/Qwen2.5-7B-Instruct`, `llama3.2`, `qwen-plus`).
        api_key: Sent as `Authorization: Bearer`; local servers (vLLM, Ollama) need none.
        system_prompt: The persona, sent first with every request; empty for none.
        history_turns: Earlier exchanges (user + assistant) sent with each request; 0 for none.
        temperature: Sampling temperature; `None` leaves it to the server.
        max_tokens: Longest reply in tokens; `None` leaves it to the server (some OpenAI models
            refuse the parameter).
        timeout_s: Longest wait to connect, for the first word of a reply, and for any later
            word once the reply has started.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    history_turns: int = Field(8, ge=0, le=100)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float = Field(10.0, gt=0.0, le=600.0)

    @field_validator("base_url", "model", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        return value or None

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL (the API root, e.g. http://127.0.0.1:8000/v1)")
        return value.rstrip("/")

    @property
    def enabled(self) -> bool:
        """Whether chat can run: both the endpoint and the model are known."""
        return bool(self.base_url and self.model)


def settings_from(config: Mapping[str, Any] | None, env: Mapping[str, str]) -> LlmSettings:
    """The settings of the config file's `llm` section, overridden by the environment.

    Args:
        config: The `llm` mapping of the config (`None` or empty: defaults, chat disabled).
        env: The process environment (`os.environ` in `serve_app.py`); `OPENAI_BASE_URL`,
            `OPENAI_API_KEY` and `LLM_MODEL` replace `base_url`, `api_key` and `model` when set
            and not empty.

    Raises:
        pydantic.ValidationError: An unknown key or a value out of range.
    """
    merged = dict(config or {})
    merged.update({field: env[var] for var, field in ENV_OVERRIDES.items() if env.get(var, "").strip()})
    return LlmSettings.model_validate(merged)
