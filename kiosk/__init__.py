"""The kiosk device agent: talks to the hall only over the public protocol (issue 5).

:class:`~kiosk.agent.KioskAgent` runs a service point's box: login, health reports,
reconnection with resume, and the resident's actions and media. ``hall-kiosk`` is its CLI.
"""
