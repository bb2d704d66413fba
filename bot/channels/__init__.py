"""The faces of Deskmate: Slack, Teams and the local web chat. Only these import a platform SDK."""
