"""Keypad digits the caller presses, gathered into one entry: it ends at `#`, after a pause,
or at a length, and reaches the agent as a caller turn (`[keypad] 1234`)."""

from __future__ import annotations

from gateway.providers.base import KEYPAD_PREFIX

_DIGITS = frozenset("0123456789*#ABCD")


def keypad_text(entry: str) -> str:
    """The caller turn of a keypad entry, as the agent and the transcript see it."""
    return f"{KEYPAD_PREFIX} {entry}"


class KeypadEntry:
    """The digits of the entry under way."""

    def __init__(self, *, max_digits: int, terminator: str = "#") -> None:
        self._max_digits = max_digits
        self._terminator = terminator
        self._digits: list[str] = []

    @property
    def pending(self) -> bool:
        """True while digits of an unfinished entry are held."""
        return bool(self._digits)

    def press(self, digit: str) -> str | None:
        """Take one key; return the finished entry if this key ends it (else None). A lone
        terminator is an entry of its own (`#`: "press pound to continue")."""
        if digit not in _DIGITS:
            return None
        if digit == self._terminator:
            return self.flush() or digit
        self._digits.append(digit)
        if len(self._digits) >= self._max_digits:
            return self.flush()
        return None

    def flush(self) -> str:
        """The entry so far (the caller paused), and a fresh one begins."""
        entry, self._digits = "".join(self._digits), []
        return entry
