"""Trust, fast checks: no pickle of our own objects in the source, and sim refuses AWS endpoints off this machine.

The refusals are checked with a socket audit hook: nothing may even try to connect to the remote
address. (Deploying a tampered model.tar.gz is in test_reliability_endpoint.py; the model dir's own
manifest checks are in test_model_dir.py.)
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from conftest import ROOT
from local_runs.netguard import ENDPOINT_VARIABLES, NonLocalEndpointError, require_local_environment

SOURCE_DIRS = ("knn", "entry", "local_runs")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal", "copyreg"}
PICKLE_CALLS = {"read_pickle", "to_pickle"}  # pandas


def _code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """Tokens of a Python file without comments and strings (docstrings may say "no pickle")."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE)]


def _pickle_uses(path: Path, root: Path = ROOT) -> list[str]:
    tokens = _code_tokens(path)
    found = []
    for i, token in enumerate(tokens):
        where = f"{path.relative_to(root)}:{token.start[0]}"
        if token.type == tokenize.NAME and (token.string in PICKLE_MODULES or token.string in PICKLE_CALLS):
            found.append(f"{where}: {token.string}")
        if token.string == "allow_pickle" and i + 2 < len(tokens) and tokens[i + 1].string == "=" \
                and tokens[i + 2].string != "False":
            found.append(f"{where}: allow_pickle={tokens[i + 2].string}")
        if token.string == "load" and i >= 2 and tokens[i - 1].string == "." and tokens[i - 2].string == "torch":
            # torch.load unpickles unless weights_only=True
            depth, j, args = 0, i + 1, []
            while j < len(tokens):
                depth += tokens[j].string == "("
                depth -= tokens[j].string == ")"
                args.append(tokens[j].string)
                if depth == 0:
                    break
                j += 1
            if "weights_only=True" not in "".join(args):
                found.append(f"{where}: torch.load without weights_only=True")
    return found


def _sources() -> list[Path]:
    files = []
    for directory in SOURCE_DIRS:
        files += [p for p in (ROOT / directory).rglob("*.py") if ".venv" not in p.parts]
    return sorted(files)


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""no pickle here"""\n# import pickle\nimport joblib\nfrom dill import loads\n'
                      "x = np.load(f, allow_pickle=True)\ny = torch.load(f)\nz = torch.load(f, weights_only=True)\n"
                      "df = pd.read_pickle(f)\nok = np.load(f, allow_pickle=False)\n")
    found = [line.split(": ", 1)[1] for line in _pickle_uses(sample, tmp_path)]
    assert found == ["joblib", "dill", "allow_pickle=True", "torch.load without weights_only=True", "read_pickle"]


def test_no_pickle_in_the_project_source():
    files = _sources()
    assert len(files) > 20 and any(p.name == "entry_point.py" for p in files)
    found = [use for path in files for use in _pickle_uses(path)]
    assert found == [], "pickle-style (de)serialisation in our code:\n" + "\n".join(found)


# --- sim stays on this machine ------------------------------------------------------------------

_connects: list = []
_recording = False


def _audit(event, args):
    if _recording and event == "socket.connect":
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture()
def connections():
    global _recording
    _connects.clear()
    _recording = True
    try:
        yield _connects
    finally:
        _recording = False


def _remote(addresses) -> list:
    out = []
    for address in addresses:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not (str(host).startswith("127.") or host in ("::1", "localhost")):
            out.append(address)
    return out


REMOTE = "http://192.0.2.10:9000"  # TEST-NET-1: never routed


@pytest.mark.parametrize("variable", ENDPOINT_VARIABLES)
@pytest.mark.parametrize("persistent", [False, True], ids=["cycle", "step-by-step"])
def test_sim_backend_refuses_remote_aws_endpoints(tmp_path, monkeypatch, connections, variable, persistent):
    from local_runs.backends import open_backend
    from local_runs.config import load_settings

    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, REMOTE)
    settings = load_settings(cli={"backend": "sim", "state_dir": str(tmp_path / "state")}, environ={})
    with pytest.raises(NonLocalEndpointError) as info:
        with open_backend(settings, persistent=persistent):
            pass
    assert f"{variable}={REMOTE}" in str(info.value) and "refuses to start" in str(info.value)
    assert _remote(connections) == []  # nothing was sent, not even a connection attempt
    assert not (tmp_path / "state" / "s3.json").exists()  # and no daemon was started
    assert os.environ[variable] == REMOTE  # the user's setting is left alone


def test_session_refuses_remote_endpoints_and_blocks_stray_requests(tmp_path, monkeypatch, connections):
    from local_runs.sim import SimSession

    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NonLocalEndpointError, match="SageMaker runtime"):
        SimSession("http://127.0.0.1:9", "bucket", state_dir=tmp_path, runtime_endpoint_url=REMOTE)
    with pytest.raises(NonLocalEndpointError, match="S3"):
        SimSession(REMOTE, "bucket", state_dir=tmp_path)
    session = SimSession("http://127.0.0.1:9", "bucket", state_dir=tmp_path)
    for service, call in (("sts", "get_caller_identity"), ("sagemaker", "list_endpoints")):
        client = session.boto_session.client(service)  # real AWS hosts: must be blocked before sending
        with pytest.raises(NonLocalEndpointError, match="blocked"):
            getattr(client, call)()
    assert _remote(connections) == []


def test_loopback_settings_pass():
    require_local_environment({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
                               "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": "http://localhost:8080", "AWS_ENDPOINT_URL": ""})
    with pytest.raises(NonLocalEndpointError):
        require_local_environment({"AWS_ENDPOINT_URL": "http://0.0.0.0:9000"})


def test_cli_refuses_remote_s3_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARIABLES}
    env["AWS_ENDPOINT_URL_S3"] = REMOTE
    out = subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(tmp_path / "state"), "cycle"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "sim refuses to start: AWS_ENDPOINT_URL_S3=http://192.0.2.10:9000" in lines[0], out.stderr
