"""Signaling: the Socket.IO protocol, WebRTC relay and connection auth (issue 3). Depends on rooms/ only."""
