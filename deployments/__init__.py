"""Ray Serve deployments of the real-time talking avatar (tts, asr, avatar, rtc)."""
