"""Call recordings: the S3 bucket (`bucket`) and the gateway's own stereo recorder of
Twilio streams (`recorder`); LiveKit rooms are recorded by Egress (`gateway.livekit.egress`)."""
