"""`engine: vllm` deployments: lmops launches and supervises the server itself.

The launch line is injectable (``vllm.command``), so these tests run ``python -m
lmops.serve.fake`` as the stand-in for vLLM: the rewritten spec proxies chat through the
real gateway to the official openai client, a SIGKILLed server (and the helper process it
started) is replaced and requests work again, bad launches fail with one line naming the
log, and nothing outlives ``close()`` or a SIGTERMed / SIGKILLed lmops. The GPU-marked test
at the end launches real vLLM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lmops.core.errors import UserError
from lmops.deploy.launcher import (
    REGISTRY,
    VLLM_HINT,
    Supervisor,
    launch_all,
    live_supervisors,
    vllm_argv,
)
from lmops.serve.deployments import DeploymentSpec, VllmOptions, load_deployments

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

FAKE = [sys.executable, "-m", "lmops.serve.fake", "--port", "{port}", "--model", "{name}"]
FAKE_ARGS = "--port {port} --model {name} --tokens 3"


def spec(tmp_path: Path, name: str = "chat", **vllm: Any) -> DeploymentSpec:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return DeploymentSpec(
        name=name, model=str(model), engine="vllm", vllm=VllmOptions.model_validate(vllm)
    )


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped (PID 1 in a container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def launch_error(specs: list[DeploymentSpec]) -> str:
    """The message of the UserError launching ``specs`` raises."""
    with pytest.raises(UserError) as e, launch_all(specs):
        pass
    return str(e.value)


def children_running(match: Callable[[list[str]], bool]) -> list[psutil.Process]:
    """This process's live descendants whose argv ``match`` accepts."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if match(p.cmdline()) and not gone(p.pid):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def fakes() -> list[psutil.Process]:
    return children_running(lambda argv: argv[1:3] == ["-m", "lmops.serve.fake"])


# -- the spec -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a, split: [{model: x, weight: 1}], engine: vllm}", "engine: vllm serves a model"),
        ("{name: a, model: x, vllm: {port: 9000}}", "add engine: vllm"),
        (
            "{name: a, model: x, engine: vllm, vllm: {args: [--port, '1']}}",
            "--port is set by lmops",
        ),
        (
            "{name: a, model: x, engine: vllm, vllm: {args: ['--max-model-len=4096']}}",
            "give --max-model-len as vllm.max_model_len",
        ),
        ("{name: a, model: x, engine: vllm, vllm: {gpu_memory_utilization: 1.5}}", "less than"),
        ("{name: a, model: x, engine: tgi}", "engine"),
    ],
)
def test_bad_vllm_specs_name_the_file_and_line(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "deployments.yaml"
    path.write_text(f"deployments:\n  - {{name: ok, model: x}}\n  - {entry}\n")
    with pytest.raises(UserError) as e:
        load_deployments(path)
    assert str(e.value).startswith(f"{path}:3:") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_launch_line_for_vllm_and_for_a_command() -> None:
    opts = VllmOptions(
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        tensor_parallel_size=2,
        args=["--enable-prefix-caching"],
    )
    assert vllm_argv(opts, model="/m", name="chat", port=8123) == [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/m",
        "--served-model-name",
        "chat",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--gpu-memory-utilization",
        "0.5",
        "--max-model-len",
        "2048",
        "--tensor-parallel-size",
        "2",
        "--enable-prefix-caching",
    ]
    own = VllmOptions(command=["{python}", "serve.py", "{model}", "--p={port}", "{name}", "{x}"])
    assert vllm_argv(own, model="/m", name="n", port=1) == [
        sys.executable,
        "serve.py",
        "/m",
        "--p=1",
        "n",
        "{x}",  # only the four placeholders are filled; JSON-like braces pass through
    ]


def test_without_vllm_or_a_command_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.deploy.launcher as launcher

    monkeypatch.setattr(launcher, "_vllm_installed", lambda: False)
    with pytest.raises(UserError) as e, launch_all([spec(tmp_path)]):
        pass
    assert str(e.value) == f"deployment 'chat': {VLLM_HINT}"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.json", '{"architectures": ["LlamaForSequenceClassification"]}'),
        ("adapter_config.json", '{"task_type": "SEQ_CLS"}'),
    ],
)
def test_a_reward_model_is_refused_before_vllm_starts(tmp_path: Path, name: str, text: str) -> None:
    s = spec(tmp_path, command=FAKE)
    (Path(str(s.model)) / name).write_text(text)
    message = launch_error([s])
    assert "is a reward model" in message and "cannot be served" in message
    assert not fakes()


# -- launching, proxying, restarting, closing ---------------------------------------------------
def test_launched_server_serves_through_the_gateway_and_comes_back_after_sigkill(
    tmp_path: Path, store: Any
) -> None:
    from fastapi.testclient import TestClient

    from lmops.api.app import create_app
    from lmops.serve.server import mount_gateway

    # a shell that leaves a helper in the server's process group, as vLLM's engine core is,
    # then becomes the fake
    command = ["sh", "-c", f'sleep 300 & exec "$0" -m lmops.serve.fake {FAKE_ARGS}', sys.executable]
    chat = spec(tmp_path, command=command).model_copy(
        update={"limits": {"rpm": 100}, "max_tokens_cap": 50, "guardrails": {"pii_input": "mask"}}
    )
    other = DeploymentSpec(name="other", upstream="http://127.0.0.1:9/v1")
    with launch_all([other, chat], store=store) as served:
        sup = live_supervisors()["chat"]
        assert served[0] == other  # not launched: passed through as is
        s = served[1]
        assert (s.engine, s.model, s.vllm) == ("builtin", None, None)
        assert s.upstream == f"http://127.0.0.1:{sup.port}/v1" and s.upstream_model == "chat"
        assert (s.limits, s.max_tokens_cap, s.guardrails) == (
            {"rpm": 100},
            50,
            {"pii_input": "mask"},
        )
        # only the gateway (which holds the key) may call the server's /v1
        assert httpx.get(f"{sup.base_url}/v1/models").status_code == 401
        assert (tmp_path / "lmops-home" / "run" / "vllm-chat.log").exists()

        _, secret = store.keys.create("t")
        app = create_app(store, mounts=[lambda a: mount_gateway(a, served, store)])
        with TestClient(app) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )

            def ask() -> str | None:
                r = client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
                return r.choices[0].message.content

            assert ask() == "tok0 tok1 tok2"
            stream = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
                "tok0 tok1 tok2"
            )

            first = sup.pid
            assert first is not None
            (helper,) = psutil.Process(first).children()
            assert helper.name() == "sleep"
            before = REGISTRY.get_sample_value(
                "lmops_engine_restarts_total", {"deployment": "chat"}
            )
            psutil.Process(first).send_signal(signal.SIGKILL)
            wait_for(lambda: sup.restarts == 1 and sup.state == "ready")
            assert sup.pid not in (None, first)
            assert gone(first) and gone(helper.pid)  # the whole old group went
            after = REGISTRY.get_sample_value("lmops_engine_restarts_total", {"deployment": "chat"})
            assert after == (before or 0) + 1
            assert ask() == "tok0 tok1 tok2"  # same port, same spec: the gateway never knew
            last = sup.pid
            (new_helper,) = psutil.Process(last).children()
    assert last is not None and gone(last) and gone(new_helper.pid)
    assert sup.state == "closed" and "chat" not in live_supervisors()


def test_a_server_that_keeps_dying_is_given_up_after_max_restarts(tmp_path: Path) -> None:
    flag = tmp_path / "started-once"
    script = (
        f'if [ -e "{flag}" ]; then echo "CUDA out of memory"; exit 1; fi; touch "{flag}"; '
        f'exec "$0" -m lmops.serve.fake --port 0 --model x'
    )
    port = 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sup = Supervisor(
        "flaky",
        ["sh", "-c", script.replace("--port 0", f"--port {port}"), sys.executable],
        port=port,
        served_name="x",
        log_path=tmp_path / "flaky.log",
        max_restarts=2,
        backoff_s=0.05,
        startup_timeout_s=30,
    )
    sup.start()
    try:
        assert sup.state == "ready"
        psutil.Process(sup.pid).kill()
        wait_for(lambda: sup.state == "failed")
        assert sup.restarts == 2 and sup.pid is None
        lines = (tmp_path / "flaky.log").read_text().splitlines()
        assert lines.count("CUDA out of memory") == 2  # each restart tried, and logged
    finally:
        sup.close()


def test_a_server_that_served_a_while_before_dying_starts_a_fresh_count(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    argv = [a.replace("{port}", str(port)).replace("{name}", "x") for a in FAKE]
    sup = Supervisor(
        "steady",
        argv,
        port=port,
        log_path=tmp_path / "steady.log",
        served_name="x",
        max_restarts=1,
        stable_s=0.3,
        backoff_s=0.05,
    )
    sup.start()
    try:
        for n in (1, 2):  # with max_restarts=1, the second restart needs the reset
            time.sleep(0.4)
            pid = sup.pid
            assert pid is not None
            psutil.Process(pid).kill()

            def back(n: int = n) -> bool:
                return sup.restarts == n and sup.state == "ready"

            wait_for(back)
    finally:
        sup.close()
    assert sup.state == "closed"


def test_a_command_that_exits_at_once_fails_with_one_line_and_the_log_tail(
    tmp_path: Path,
) -> None:
    command = [sys.executable, "-c", "print('loading'); print('RuntimeError: no GPU'); exit(3)"]
    with pytest.raises(UserError) as e, launch_all([spec(tmp_path, command=command)]):
        pass
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("deployment 'chat': server exited with code 3 before it was ready: ")
    assert "loading | RuntimeError: no GPU" in msg
    assert msg.endswith(f"(log {tmp_path / 'lmops-home' / 'run' / 'vllm-chat.log'})")


def test_a_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    marker = "lmops-test-never-ready"
    command = [sys.executable, "-c", f"import time; print('{marker}', flush=True); time.sleep(60)"]
    with (
        pytest.raises(UserError, match=r"server not ready after 1 s .*vllm.startup_timeout_s"),
        launch_all([spec(tmp_path, command=command, startup_timeout_s=1)]),
    ):
        pass
    assert children_running(lambda argv: any(marker in a for a in argv)) == []
    assert live_supervisors() == {}


def test_a_taken_port_or_a_missing_command_is_refused(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        msg = launch_error([spec(tmp_path, command=FAKE, port=port)])
        assert f"port {port} on 127.0.0.1 is in use" in msg
    msg = launch_error([spec(tmp_path, command=["no-such-vllm", "serve"])])
    assert msg == (
        "deployment 'chat': command 'no-such-vllm' not found; fix vllm.command or install it"
    )


def test_two_deployments_get_their_own_servers_and_all_stop_on_an_error(tmp_path: Path) -> None:
    bad = [sys.executable, "-c", "exit(1)"]
    good = spec(tmp_path, "a", command=FAKE)
    assert launch_error([good, spec(tmp_path, "b", command=bad)]).startswith("deployment 'b': ")
    assert live_supervisors() == {}
    assert fakes() == []
    with launch_all([good, spec(tmp_path, "c", command=FAKE)]) as served:
        sups = live_supervisors()
        assert sups["a"].port != sups["c"].port
        assert [s.upstream_model for s in served] == ["a", "c"]
        pids = [sups["a"].pid, sups["c"].pid]
    assert all(p is not None and gone(p) for p in pids)


_SERVE = """\
import json, os, sys
from lmops.serve import startup
from lmops.serve.deployments import DeploymentSpec
from lmops.deploy.launcher import launch_all, live_supervisors
from lmops.serve.server import ENV

if __name__ == "__main__":  # what `lmops serve` does: launch, then N uvicorn workers
    spec = DeploymentSpec.model_validate_json(sys.argv[1])
    with launch_all([spec]) as served:
        os.environ[ENV] = json.dumps([s.model_dump(mode="json") for s in served])
        print(live_supervisors()["chat"].pid, flush=True)
        startup.run("lmops.api.app:create_app", on_ready=lambda: None, port=int(sys.argv[2]),
                    workers=int(sys.argv[3]), log_level="warning")
"""


@pytest.mark.parametrize(
    ("sig", "workers", "rc"),
    [(signal.SIGTERM, 1, 143), (signal.SIGTERM, 2, 0), (signal.SIGKILL, 1, -signal.SIGKILL)],
    ids=["sigterm-1-worker", "sigterm-2-workers", "sigkill"],
)
def test_workers_share_the_server_and_none_outlives_a_killed_lmops(
    tmp_path: Path, store: Any, sig: signal.Signals, workers: int, rc: int
) -> None:
    """SIGTERM: uvicorn shuts down, then lmops stops the server (one worker: uvicorn
    re-raises the SIGTERM, which launch_all turned into SystemExit). SIGKILL: nothing runs
    in lmops, so the parent-death signal the server was started with stops it."""
    from tests.conftest import free_port

    _, secret = store.keys.create("t")
    (tmp_path / "serve.py").write_text(_SERVE)
    port = free_port()
    s = spec(tmp_path, command=[*FAKE, "--tokens", "2"])
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "serve.py"), s.model_dump_json(), str(port), str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        server = int(proc.stdout.readline())
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0, timeout=10
        )

        def answers() -> bool:
            try:
                r = client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIConnectionError:
                return False
            return r.choices[0].message.content == "tok0 tok1"

        wait_for(answers)
        for _ in range(2 * workers):  # whichever worker answers, it proxies to the one server
            assert answers()
        assert len(fakes()) == 1
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == rc
        wait_for(lambda: gone(server), timeout=20)
    finally:
        proc.kill()
        proc.wait()


# -- real vLLM ------------------------------------------------------------------------------------
def _vllm_on_cuda() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(
    not _vllm_on_cuda(),
    reason="needs vLLM and a CUDA GPU: pip install 'lmops[vllm]' on a GPU machine, pytest -m gpu",
)
def test_real_vllm_serves_a_tiny_model_through_the_gateway(tmp_path: Path, store: Any) -> None:
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.api.app import create_app
    from lmops.serve.server import mount_gateway
    from tests.train.tiny import make_tokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path / "tok")))
    model = tmp_path / "tiny"
    # head size 64: the size vLLM's attention kernels all support
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(model))
    tok.save_pretrained(str(model))
    tiny = DeploymentSpec(
        name="tiny",
        model=str(model),
        engine="vllm",
        vllm=VllmOptions(
            gpu_memory_utilization=0.3,
            max_model_len=256,
            args=["--enforce-eager", "--dtype", "float16"],
        ),
    )
    with launch_all([tiny], store=store) as served:
        _, secret = store.keys.create("t")
        app = create_app(store, mounts=[lambda a: mount_gateway(a, served, store)])
        with TestClient(app) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            r = client.completions.create(model="tiny", prompt="The quick", max_tokens=5)
            # random weights may draw EOS early
            assert r.usage is not None and 1 <= r.usage.completion_tokens <= 5
            assert isinstance(r.choices[0].text, str)
        sup = live_supervisors()["tiny"]
        assert served[0].upstream == f"http://127.0.0.1:{sup.port}/v1"
        assert httpx.get(f"{sup.base_url}/health").status_code == 200
        pid = sup.pid
    assert pid is not None and gone(pid)


def test_lmops_serve_launches_engine_vllm_deployments(
    tmp_path: Path, store: Any, lmops_home: Path
) -> None:
    """The CLI wiring: ``lmops serve --deployments`` launches the server before its workers,
    proxies to it, and stops it when lmops is terminated."""
    from tests.serve.conftest import lmops_env, start_server, stop_server

    _, secret = store.keys.create("cli")
    (tmp_path / "model").mkdir()
    fake = ", ".join(f"'{a}'" for a in [*FAKE, "--tokens", "2"])
    (tmp_path / "dep.yaml").write_text(
        "deployments:\n"
        f"  - {{name: chat, model: '{tmp_path / 'model'}', engine: vllm, vllm: {{command: [{fake}]}}}}\n"
    )
    proc, base = start_server(
        lmops_env(lmops_home),
        "--deployments",
        str(tmp_path / "dep.yaml"),
        ready=lambda b: httpx.get(f"{b}/readyz", timeout=2).status_code == 200,
    )
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
        r = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
        assert r.choices[0].message.content == "tok0 tok1"
        launched = [p.pid for p in fakes()]
        assert len(launched) == 1
    finally:
        stop_server(proc)
    wait_for(lambda: all(gone(pid) for pid in launched), timeout=20)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hung_server_is_restarted_and_counted_on_metrics(
    tmp_path: Path, store: Any, lmops_home: Path, workers: int
) -> None:
    """A server that is alive but stops answering (SIGSTOP) fails its /health probes, is
    stopped and restarted; /metrics shows the hang and the restart, with 1 or 2 workers."""
    from tests.serve.conftest import lmops_env, start_server, stop_server

    _, secret = store.keys.create("cli")
    (tmp_path / "model").mkdir()
    fake = ", ".join(f"'{a}'" for a in [*FAKE, "--tokens", "2"])
    opts = f"command: [{fake}], health_interval_s: 0.2, health_failures: 2, stop_grace_s: 0.5"
    (tmp_path / "dep.yaml").write_text(
        "deployments:\n"
        f"  - {{name: chat, model: '{tmp_path / 'model'}', engine: vllm, vllm: {{{opts}}}}}\n"
    )
    proc, base = start_server(
        lmops_env(lmops_home),
        "--deployments",
        str(tmp_path / "dep.yaml"),
        "--workers",
        str(workers),
        ready=lambda b: httpx.get(f"{b}/readyz", timeout=2).status_code == 200,
    )
    try:
        first = [p.pid for p in fakes()]
        assert len(first) == 1
        psutil.Process(first[0]).suspend()  # alive, answering nothing
        wait_for(lambda: [p.pid for p in fakes()] not in ([], first), timeout=30)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)

        def answers() -> bool:
            try:
                r = client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}]
                )
            except openai.APIError:
                return False
            return r.choices[0].message.content == "tok0 tok1"

        wait_for(answers, timeout=30)
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'lmops_engine_hangs_total{deployment="chat"} 1.0' in metrics
        assert 'lmops_engine_restarts_total{deployment="chat"} 1.0' in metrics
        assert gone(first[0])
    finally:
        stop_server(proc)
