"""The model layer, below the stages: loading models and tokenizers, merging adapters, and
the continuous-batching engine that serving, batch inference and evaluation share."""
