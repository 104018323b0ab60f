"""opsbot: incident-response ChatOps for Slack."""

__version__ = "0.1.0"
