"""Small clients of the HTTP + WebRTC API (used by the end-to-end tests and benchmarks)."""
