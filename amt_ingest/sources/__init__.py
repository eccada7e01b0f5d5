"""Where events come from: the Passport WebSocket (primary) and SQS (safety net)."""
