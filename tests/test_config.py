"""local_runs.config: the backend flag from file, environment and command line, in that precedence."""
import pytest

from local_runs.config import ConfigError, load_settings


def test_default_is_sim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.backend == "sim" and settings.resolved_instance_type == "local"
    assert settings.sources["backend"] == "default"


def test_precedence_cli_over_env_over_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_runs.toml").write_text('backend = "docker"\n[sagemaker]\nrole = "arn:x"\nbucket = "b"\n')
    assert load_settings(environ={}).backend == "docker"
    assert load_settings(environ={"LOCAL_RUNS_BACKEND": "sagemaker"}).backend == "sagemaker"
    settings = load_settings(cli={"backend": "sim"}, environ={"LOCAL_RUNS_BACKEND": "sagemaker"})
    assert settings.backend == "sim" and settings.sources["backend"] == "command line"
    assert settings.role == "arn:x" and settings.bucket == "b"


def test_sagemaker_instance_type_default_and_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(cli={"backend": "sagemaker"}, environ={}).resolved_instance_type == "ml.m4.xlarge"
    settings = load_settings(cli={"backend": "sagemaker"}, environ={"LOCAL_RUNS_INSTANCE_TYPE": "ml.c5.xlarge"})
    assert settings.resolved_instance_type == "ml.c5.xlarge"


@pytest.mark.parametrize(
    "text, environ, fragment",
    [
        ('backend = "cloud"\n', {}, "backend 'cloud'"),
        ('colour = "red"\n', {}, "unknown setting 'colour'"),
        ("backend = \n", {}, "not valid TOML"),
        ("", {"LOCAL_RUNS_BACKEND": "k8s"}, "LOCAL_RUNS_BACKEND"),
    ],
)
def test_bad_settings_name_their_source(tmp_path, monkeypatch, text, environ, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_runs.toml").write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_settings(environ=environ)


def test_explicit_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={}, config_path=tmp_path / "nope.toml")
