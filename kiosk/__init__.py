"""The kiosk device agent: talks to the hall only over the public protocol (issue 5)."""
