"""Monitoring: what the gateway reports about itself (Prometheus metrics, one JSON access-log
line per request), what is read back from the request log (usage per key and deployment,
the flow-back of logged chats into training data), and what watches it: drift monitors
against a reference (``drift``, ``checks``), canary prompts (``canary``) and alerts
(``alerts``), each evaluation a ``drift_report`` asset (``report``)."""
