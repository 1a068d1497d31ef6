"""The app's side of reading in pairs (`PairedReads`): the server is told only when joining
starts or stops, and a held message goes on alone only at the end of a read in pairs."""

from __future__ import annotations

from gateway.ws_protocol import READ_PAIRS, PairedReads


class _Server:
    """The server's side of the extension: what it was told, and messages read, waiting."""

    def __init__(self) -> None:
        self.told: list[bool] = []
        self.waiting = 0

    def offer(self) -> dict[str, object]:
        return {"extensions": {READ_PAIRS: {"set": self.told.append, "waiting": self.count}}}

    def count(self) -> int:
        return self.waiting


def test_no_offer_no_pairs() -> None:
    assert PairedReads.of({"extensions": {}}) is None
    assert PairedReads.of({}) is None


def test_the_server_is_told_when_joining_starts_and_stops() -> None:
    server = _Server()
    pairs = PairedReads.of(server.offer())
    assert pairs is not None
    server.waiting = 1
    steps = [pairs.after_message(join) for join in (False, True, True, True, False, False, True)]
    assert server.told == [True, False, True]
    assert steps == [False] * 7  # a message waits after each: never the end of a read


def test_a_held_message_goes_on_alone_at_the_end_of_a_read_in_pairs() -> None:
    server = _Server()
    pairs = PairedReads.of(server.offer())
    assert pairs is not None
    assert not pairs.after_message(True)  # turned on: this read was not in pairs
    server.waiting = 1
    assert not pairs.after_message(True)  # the first of a read of two
    server.waiting = 0
    assert pairs.after_message(True)  # its last: whatever is held would wait a read
    assert not pairs.after_message(False)  # turned off
    assert not pairs.after_message(False)  # not in pairs: messages are joined as they come
    assert server.told == [True, False]
