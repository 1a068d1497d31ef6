"""Outbound campaigns: the dialer that places a campaign's calls (any gateway may lead a
campaign, one at a time), its calling windows, and the clock every schedule decision reads."""
