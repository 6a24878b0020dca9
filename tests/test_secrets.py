"""Secrets never written: planted in a job's environment variables, program arguments and a
URL, and raised back in an entry script's error, they reach the script but appear in no file
of the run, no report and no message (``tests/test_s3.py`` does the same for storage
credentials in the environment)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, output_of, write_job

from daskprs.cli import cli
from daskprs.paths import REDACTED, looks_secret, redact, redact_data

TOKEN = "tok-4711-planted"
API_KEY = "key-0815-planted"
PASSWORD = "pw-1234-planted"
SIGNATURE = "sig-9999-planted"
SECRETS = (TOKEN, API_KEY, PASSWORD, SIGNATURE)

SCRIPT = """
import argparse, hashlib, os

def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:12]

def run(mini_batch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    parser.add_argument("--endpoint")
    args, _ = parser.parse_known_args()
    names = [os.path.basename(p) for p in mini_batch]
    if "f001.txt" in names:
        raise ConnectionError(
            f"cannot reach {args.endpoint} with API_TOKEN={os.environ['API_TOKEN']} "
            f"--api-key {args.api_key}"
        )
    return [f"{n} {digest(os.environ['API_TOKEN'])} {digest(args.api_key)} "
            f"{digest(args.endpoint)}" for n in names]
"""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://me:pa55@host/b?sig=abc&sv=1", "s3://me:***@host/b?sig=***&sv=1"),
        ("https://a.blob.core.windows.net/c?sv=2020&sig=X%2F1&se=2", "sig=***&se=2"),
        ("AWS_SECRET_ACCESS_KEY=abc other", "AWS_SECRET_ACCESS_KEY=*** other"),
        ('{"password": "hunter2"}', '{"password": "***"}'),
        ("--api-key xyz --model m", "--api-key *** --model m"),
        ('["--db-password", "pw"]', '["--db-password", "***"]'),
        ("X-Amz-Signature=abcd&X-Amz-Credential=AK/1", "X-Amz-Signature=***&X-Amz-Credential=***"),
        # argparse's one-argument form, and connection strings masked whole
        ("--password=hunter2 --n 1", "--password=*** --n 1"),
        ('["--password=hunter2", "--n", "1"]', '["--password=***", "--n", "1"]'),
        ("--conn_str Server=x;Uid=u;Pass=y --n 1", "--conn_str *** --n 1"),
        ('["--conn_str", "Server=x;Pass=y"]', '["--conn_str", "***"]'),
        ("--connection-string=Server=x;Pass=y", "--connection-string=***"),
        ("--dsn postgres://u@h/db?x=1", "--dsn ***"),
        ("ARGS=--api_key=k1", "ARGS=--api_key=***"),
        ("--api-key --model m", None),  # a flag without its value
        ("--input=/data/key/x.csv --model=keyboard", None),
        ("/data/sort-key=3/f.csv --reconnect_strategy=fast", None),
        # what is not a secret stays as it is
        ("the token expired at --task_overhead_timeout 30", None),
        ("tokenizer=bert keyboard=us signal=9 --mini_batch_size 10", None),
        ("/data/key=3/token=x/f.csv", None),  # hive-style folders of a path
        # azure-identity's errors: a credential's class names its message, and a line that
        # ends with "credentials:" takes no word of the next
        ("\tAzureCliCredential: Azure CLI not found on path", None),
        ("Attempted credentials:\n\tEnvironmentCredential: unavailable", None),
        ("credential: k3y-planted, AZURE_CREDENTIAL=k3y", "credential: ***, AZURE_CREDENTIAL=***"),
    ],
)
def test_redact(text, expected):
    assert (expected or text) in redact(text)
    assert redact(redact(text)) == redact(text)


def test_secret_names_and_data():
    for name in ("AWS_SECRET_ACCESS_KEY", "API_TOKEN", "db-password", "storage_key", "sig"):
        assert looks_secret(name), name
    connection = ("--conn_str", "conn_string", "connection_string", "--connstr", "dsn", "ConnStr")
    for name in (*connection, "AZURE_STORAGE_CONNECTION_STRING", "ODBC_DSN"):
        assert looks_secret(name), name
    for name in ("PATH", "HOME", "TOKENIZERS_PARALLELISM", "KEYBOARD", "signal", "partition_keys"):
        assert not looks_secret(name), name
    for name in ("reconn_strategy", "connection", "conn", "string", "str"):
        assert not looks_secret(name), name
    for name in ("AzureCliCredential", "DefaultAzureCredential", "ClientSecretCredential"):
        assert not looks_secret(name), name  # a class, whose message follows its name
    for name in ("credential", "storage_credential", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert looks_secret(name), name
    data = {"env": {"API_TOKEN": "t", "HOME": "/h"}, "argv": ["--api-key", "k", "--n", "1"]}
    assert redact_data(data) == {
        "env": {"API_TOKEN": REDACTED, "HOME": "/h"},
        "argv": ["--api-key", REDACTED, "--n", "1"],
    }
    flat = {"jobs.token_counter.timeout": 5, "jobs.s.environment_variables.DB_PASSWORD": "p"}
    assert redact_data(flat) == {**flat, "jobs.s.environment_variables.DB_PASSWORD": REDACTED}


def test_flags_with_their_value_in_one_item_are_masked_and_do_not_mask_the_next():
    argv = ["--password=hunter2", "--n", "1", "--conn_str", "Server=x;Password=y", "--m=2", "k"]
    assert redact_data(argv) == ["--password=***", "--n", "1", "--conn_str", REDACTED, "--m=2", "k"]
    sets = ["jobs.s.task.program_arguments=--token=t1 --n 1", "inputs.n=3"]
    assert redact_data(sets) == ["jobs.s.task.program_arguments=--token=*** --n 1", sets[1]]
    # written into one string (as run.json keeps a step's program arguments)
    text = '["--password=hunter2", "--conn_str", "Server=x;Uid=u;Pass=y"]'
    assert redact(text) == '["--password=***", "--conn_str", "***"]'


def every_file(root: Path):
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.mark.slow
def test_planted_secrets_reach_the_script_and_no_file_or_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 4)
    endpoint = f"https://reader:{PASSWORD}@store.example/data?sv=2020&sig={SIGNATURE}"
    job = write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        program_arguments=f"--api-key {API_KEY} --endpoint {endpoint}",
        extra=f"retry_settings:\n  max_retries: 0\nenvironment_variables:\n  API_TOKEN: {TOKEN}",
    )
    runner = CliRunner()
    run = runner.invoke(cli, ["run", str(job), "--run-dir", "run", "--workers", "1"])
    assert run.exit_code == 0, run.output
    run_dir = tmp_path / "run"
    # the script got every secret as given
    rows = output_of(run_dir).read_text().splitlines()
    got = f"{digest(TOKEN)} {digest(API_KEY)} {digest(endpoint)}"
    assert rows == [f"f00{i}.txt {got}" for i in (0, 2, 3)]
    status = runner.invoke(cli, ["status", "run"])
    report = runner.invoke(cli, ["report", "run"])
    validate = runner.invoke(cli, ["validate", str(job)])
    assert status.exit_code == report.exit_code == validate.exit_code == 0
    # its failure is reported, with the secrets masked
    failed = (run_dir / "failed_mini_batches.jsonl").read_text()
    assert "ConnectionError: cannot reach https://reader:***@store.example" in failed
    assert "API_TOKEN=***" in failed and "--api-key ***" in failed
    assert f"API_TOKEN: {REDACTED}" in (run_dir / "job.json").read_text().replace('"', "")
    files = dict(every_file(run_dir))
    assert any(p.name == "report.html" for p in files)
    for path, data in files.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path}"
    for result in (run, status, report, validate):
        for secret in SECRETS:
            assert secret not in result.output


ARGV_SCRIPT = """
import hashlib, sys

def run(mini_batch):
    return [hashlib.sha256(" ".join(sys.argv[1:]).encode()).hexdigest()[:12] for _ in mini_batch]
"""


@pytest.mark.slow
def test_one_argument_flags_and_connection_strings_reach_the_script_and_no_record(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 1)
    job = write_job(
        tmp_path,
        ARGV_SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        program_arguments="--password=hunter2 --conn_str Server=x;Password=y --n 1",
    )
    run = CliRunner().invoke(cli, ["run", str(job), "--run-dir", "run", "--workers", "1"])
    assert run.exit_code == 0, run.output
    argv = "--password=hunter2 --conn_str Server=x;Password=y --n 1"
    assert output_of(tmp_path / "run").read_text().split() == [digest(argv)]
    for name in ("job.json", "run.json"):
        text = (tmp_path / "run" / name).read_text()
        assert "hunter2" not in text and "Password=y" not in text and "Server=x" not in text
        assert "--password=***" in text and "--n" in text, text
    for path, data in every_file(tmp_path / "run"):
        assert b"hunter2" not in data and b"Password=y" not in data, path
    assert "hunter2" not in run.output
