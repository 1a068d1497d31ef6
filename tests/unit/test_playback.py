from gateway.call.playback import PlaybackTracker


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heard_text_is_played_segments_plus_the_played_share_of_the_next() -> None:
    clock = _Clock()
    tracker = PlaybackTracker(rate=8000, clock=clock)
    first = tracker.begin_segment("one two three four")
    tracker.add_audio(8000)  # 1 s
    tracker.close_segment()
    second = tracker.begin_segment("five six seven eight")
    tracker.add_audio(8000)
    tracker.close_segment()
    assert tracker.playing
    clock.now += 1.0
    assert tracker.mark_played(first)
    clock.now += 0.5  # half of the second segment played
    assert tracker.heard_text() == "one two three four five six"
    assert tracker.full_text() == "one two three four five six seven eight"
    assert not tracker.mark_played("unknown")
    assert tracker.mark_played(second)
    assert not tracker.playing
    assert tracker.heard_text() == tracker.full_text()


def test_nothing_heard_before_audio_is_sent() -> None:
    tracker = PlaybackTracker(rate=8000, clock=_Clock())
    tracker.begin_segment("hello there")
    assert tracker.heard_text() == ""
    assert not tracker.playing


def test_mark_names_stay_unique_across_resets() -> None:
    tracker = PlaybackTracker(rate=8000, clock=_Clock())
    a = tracker.begin_segment("a")
    tracker.reset()
    b = tracker.begin_segment("b")
    assert a != b
    assert not tracker.mark_played(a)
