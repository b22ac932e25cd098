"""The package works on NDIF when installed normally (not editable), against a server that does
NOT have remote_introspect: the torch-only intervention module ships by value with each request.

Set-up: a non-editable install into a temporary site-packages; a loopback NDIF server in another
process whose importer refuses `remote_introspect` (as NDIF's workers would); the real CLI as the
client. A negative control shows the same request fails on that server without the registration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import remote_introspect
from remote_introspect.models.tiny import materialize_tiny_model
from remote_introspect.testing import ndif_loopback

REPO = Path(remote_introspect.__file__).resolve().parent.parent

SERVER = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys, time

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "remote_introspect" or name.startswith("remote_introspect."):
                raise ModuleNotFoundError(f"No module named {name!r} (not installed on this server)")
            return None

    sys.meta_path.insert(0, Refuse())
    spec = importlib.util.spec_from_file_location("ndif_loopback_standalone", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    with mod.LoopbackNDIF({sys.argv[2]: sys.argv[2]}, preload=True) as srv:
        print(srv.url, flush=True)
        while True:
            time.sleep(1)
    """
)

NEGATIVE = textwrap.dedent(
    """
    import sys, time, torch, nnsight
    from remote_introspect.execution.traces import interventions
    from remote_introspect.testing.ndif_loopback import client_model_for_dir
    from nnsight.modeling.huggingface import _ID_CACHE
    assert "site-packages" in interventions.__file__, interventions.__file__
    nnsight.CONFIG.API.APIKEY = "test-key"
    model = client_model_for_dir(sys.argv[2])
    if sys.argv[3] == "register":
        nnsight.ndif.register(interventions)
    with model.trace("Hello there", remote=sys.argv[1], blocking=False) as tracer:
        h = model.model.layers[0].output
        m = interventions.span_mask(h.shape[1], torch.tensor([0]), True, h.dtype)
        out = m.sum().save()
    backend = tracer.backend
    for _ in range(600):
        try:
            res = backend()
        except Exception as err:
            print("REMOTE-ERROR", str(err).splitlines()[-1])
            sys.exit(0)
        if res is not None:
            print("OK", float(res["out"]))
            sys.exit(0)
        time.sleep(0.05)
    print("TIMEOUT")
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A regular (non-editable) install of this checkout into a fresh site-packages dir."""
    target = tmp_path_factory.mktemp("inst") / "site-packages"
    build = tmp_path_factory.mktemp("build")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=build,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert (target / "remote_introspect" / "execution" / "traces" / "interventions.py").exists()
    return target


@pytest.fixture(scope="module")
def foreign_server(tmp_path_factory):
    """A loopback NDIF server process that cannot import remote_introspect."""
    models = tmp_path_factory.mktemp("models")
    model_dir = materialize_tiny_model(models, "llama", seed=0)
    script = models / "serve.py"
    script.write_text(SERVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen(
        [sys.executable, str(script), ndif_loopback.__file__, str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=models,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        pytest.fail(f"server did not start: {proc.stderr.read()}")
    yield url, model_dir
    proc.kill()
    proc.wait()


def _client_env(installed: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(installed), "NDIF_API_KEY": "test-key"}


def test_negative_control_unregistered_module_fails_on_the_server(installed, foreign_server, tmp_path):
    url, model_dir = foreign_server
    script = tmp_path / "client.py"
    script.write_text(NEGATIVE)
    env = _client_env(installed)
    bad = subprocess.run([sys.executable, str(script), url, str(model_dir), "plain"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert "REMOTE-ERROR" in bad.stdout and "remote_introspect" in bad.stdout, bad.stdout + bad.stderr
    good = subprocess.run([sys.executable, str(script), url, str(model_dir), "register"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert "\nOK 6.0" in "\n" + good.stdout, good.stdout + good.stderr


def test_installed_cli_runs_on_a_server_without_the_package(installed, foreign_server, tmp_path):
    url, model_dir = foreign_server
    env = _client_env(installed)
    where = subprocess.run([sys.executable, "-c", "import remote_introspect as r; print(r.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert where.stdout.startswith(str(installed)), where.stdout
    t0 = time.time()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_introspect",
            "replicate-lindsey",
            "--model",
            str(model_dir),
            "--backend",
            "ndif",
            "--ndif-host",
            url,
            "--concepts",
            "Dust,Oceans",
            "--strength-mode",
            "mlp-norm-matched",
            "--max-new-tokens",
            "3",
            "--cache",
            str(tmp_path / "c"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "0 failed" in res.stdout and time.time() - t0 < 300
    assert "RECEIVED" not in res.stdout and "COMPLETED" not in res.stdout  # stdout is results only
