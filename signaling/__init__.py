"""Signaling: the Socket.IO protocol, WebRTC relay and connection auth.

Depends on rooms/ only; arrives with issue 3.
"""
