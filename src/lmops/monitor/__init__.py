"""Monitoring: what the gateway reports about itself (Prometheus metrics, one JSON access-log
line per request) and what is read back from the request log (usage per key and deployment,
the flow-back of logged chats into training data)."""
