"""Call transports and carrier APIs. Protocol classes here never touch a socket."""
