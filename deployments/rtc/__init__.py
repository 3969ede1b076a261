"""HTTP API, session-affine SessionHost, per-session conductor and WebRTC tracks."""
