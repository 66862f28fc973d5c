"""Deployment: taking a model to where it runs. Today: launching and supervising vLLM servers
for ``engine: vllm`` deployments (:mod:`lmops.deploy.launcher`)."""
