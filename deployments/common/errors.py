"""A small error taxonomy; each error knows the HTTP status a client should see."""

from __future__ import annotations


class AvatarError(Exception):
    """Base class: a problem a client can be told about."""

    status: int = 500

    def __init__(self, msg: str, *, status: int | None = None) -> None:
        super().__init__(msg)
        if status is not None:
            self.status = status

    @property
    def msg(self) -> str:
        return str(self)


class BadRequest(AvatarError):
    """Malformed or invalid client input (JSON, fields, uploads)."""

    status = 400


class BadOffer(BadRequest):
    """An SDP offer that cannot be parsed or negotiated."""


class PayloadTooLarge(BadRequest):
    """Text or upload over the configured limit."""

    status = 413


class UnsupportedMedia(BadRequest):
    """An upload that is not decodable audio."""

    status = 415


class Unauthorized(AvatarError):
    """A missing or wrong API key or session token."""

    status = 401


class RequestTimeout(BadRequest):
    """A client that sent its request body too slowly."""

    status = 408


class TooManyRequests(AvatarError):
    """A per-session or per-client limit (queued speech, pending offers, failed lookups)."""

    status = 429


class SessionNotFound(AvatarError):
    """No such session on its owner replica (never existed or already closed)."""

    status = 404


class SessionGone(AvatarError):
    """The session's owner replica is gone: the session died with it."""

    status = 410


class Overloaded(AvatarError):
    """Admission control: no room for another session."""

    status = 503


class NotConfigured(AvatarError):
    """A feature the server was not configured for (e.g. chat without an LLM)."""

    status = 501


class EngineError(AvatarError):
    """A backend engine (TTS, model) failed; `retryable` says whether trying again may help."""

    status = 502

    def __init__(self, msg: str, *, retryable: bool = False) -> None:
        super().__init__(msg)
        self.retryable = retryable


class CheckpointError(AvatarError):
    """Model weights that are missing, unreadable or do not fit the network (a setup problem)."""

    status = 500
