"""A session's conversation as chat messages: bounded, and true to what the user actually heard.

Each exchange is a `Turn`: what the user said, what the LLM wrote, and, once the caller knows,
what of it was spoken before an interrupt. The messages sent with the next request carry the
heard text, never words the user did not hear. A turn of which nothing was heard leaves no
assistant message: its user text is joined to the next user message, so roles still alternate
(some chat templates refuse two user messages in a row) and the LLM still sees everything the
user said.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["History", "Turn"]


@dataclass(eq=False)  # turns are told apart by identity: two may say the same
class Turn:
    """One exchange.

    Attributes:
        user: What the user said.
        written: The reply as far as the LLM streamed it.
        heard: What the user heard of it, once the caller said (`History.spoken`); `None`:
            all of `written`.
    """

    user: str
    written: str = ""
    heard: str | None = None

    @property
    def answer(self) -> str:
        """The assistant's side of the exchange, as the user experienced it."""
        return (self.written if self.heard is None else self.heard).strip()


class History:
    """The last `max_turns` exchanges, oldest first, behind a system prompt.

    Args:
        max_turns: Exchanges kept; older ones are forgotten. 0 keeps none.
        system_prompt: Sent first with every request; empty for none.
    """

    def __init__(self, max_turns: int, system_prompt: str = "") -> None:
        if max_turns < 0:
            raise ValueError("max_turns must be at least 0")
        self.system_prompt = system_prompt
        self._turns: deque[Turn] = deque(maxlen=max_turns)

    @property
    def turns(self) -> list[Turn]:
        """The kept exchanges, oldest first (the one being answered last)."""
        return list(self._turns)

    def messages(self, user_text: str) -> list[dict[str, str]]:
        """The messages of a request answering `user_text`: system, kept exchanges, `user_text`."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        unanswered: list[str] = []  # user texts of turns the user heard no answer to
        for turn in self._turns:
            unanswered.append(turn.user)
            if turn.answer:
                messages.append({"role": "user", "content": "\n".join(unanswered)})
                messages.append({"role": "assistant", "content": turn.answer})
                unanswered = []
        messages.append({"role": "user", "content": "\n".join([*unanswered, user_text])})
        return messages

    def begin(self, user_text: str) -> Turn:
        """Start the exchange answering `user_text` (call `messages` first); the oldest may go."""
        turn = Turn(user_text)
        self._turns.append(turn)
        return turn

    def forget(self, turn: Turn) -> None:
        """Drop `turn`, e.g. a request that failed before any reply (the user will ask again)."""
        if turn in self._turns:
            self._turns.remove(turn)

    def spoken(self, text: str) -> None:
        """Say what the user heard of the latest reply, e.g. after an interrupt.

        Args:
            text: The reply's words that were played (sentences whose audio was heard, joined
                with spaces, or a prefix of them); empty when nothing was heard.
        """
        if self._turns:
            self._turns[-1].heard = text

    def clear(self) -> None:
        """Forget every exchange (the system prompt stays)."""
        self._turns.clear()
