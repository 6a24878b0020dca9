"""What a user moving a pipeline from Azure meets first (issue 22): a ``uri_file`` output read
by a later step, command steps in a mapped environment, data on Azure and over HTTP, what
entry scripts see, driver arguments in ``program_arguments``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, output_of, write_job

from daskprs.api import run_job
from daskprs.cli import cli
from daskprs.errors import UserInputError
from daskprs.execute.preflight import check_entry_script

# Azure's mnist-batch-identification-using-parallel pipeline ends so: the parallel step's
# uri_file output (no path) printed by a command step.
CAT_PIPELINE = """\
type: pipeline
inputs:
  data: {type: uri_folder, path: ./data}
jobs:
  score:
    type: parallel
    inputs:
      data: ${{parent.inputs.data}}
    outputs:
      job_output_file: {type: uri_file, mode: rw_mount}
    input_data: ${{inputs.data}}
    mini_batch_size: "2"
    task:
      type: run_function
      code: ./code
      entry_script: score.py
      append_row_to: ${{outputs.job_output_file}}
  show:
    type: command
    code: ./code
    inputs:
      job_output_file: ${{parent.jobs.score.outputs.job_output_file}}
    outputs:
      copy: {type: uri_folder}
    command: cat ${{inputs.job_output_file}} > ${{outputs.copy}}/seen.txt
"""


def _cat_job(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"d{i}.txt").write_text(str(i))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(
        "import os\n\ndef run(mini_batch):\n"
        "    return [os.path.basename(p) + ' ' + open(p).read() for p in mini_batch]\n"
    )
    job = tmp_path / "pipeline.yml"
    job.write_text(CAT_PIPELINE)
    return job


def test_a_uri_file_output_without_a_path_is_read_as_the_file(tmp_path, client):
    job = _cat_job(tmp_path)
    result = run_job(job, run_dir=tmp_path / "runs/r1", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    rows = ["d0.txt 0", "d1.txt 1", "d2.txt 2"]
    seen = tmp_path / "runs/r1/outputs/show/copy/seen.txt"
    assert seen.read_text().splitlines() == rows
    written = tmp_path / "runs/r1/outputs/score/job_output_file/parallel_run_step.txt"
    assert result.outputs["score.job_output_file"] == str(written)

    # reused the second time: the copied output is still read as the file
    lines: list[str] = []
    again = run_job(job, run_dir=tmp_path / "runs/r2", client=client, echo=lines.append)
    assert again.ok, again.failure
    assert set(again.reused) == {"score", "show"}, lines
    assert (tmp_path / "runs/r2/outputs/show/copy/seen.txt").read_text().splitlines() == rows
    assert again.outputs["score.job_output_file"] == str(
        tmp_path / "runs/r2/outputs/score/job_output_file/parallel_run_step.txt"
    )


def _venv(folder: Path) -> Path:
    """A venv made in the test (no pip, no network); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return folder / "bin" / "python"


COMMAND_PIPELINE = """\
type: pipeline
jobs:
  prep:
    type: command
    code: ./prep
    environment: azureml:prep-env:1
    command: {command}
    outputs:
      out: {{type: uri_folder}}
"""


def _command_job(tmp_path: Path, command: str, script: str) -> Path:
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "make.py").write_text(script)
    job = tmp_path / "pipeline.yml"
    job.write_text(COMMAND_PIPELINE.format(command=command))
    return job


def test_a_command_runs_the_python_its_environment_maps_to(tmp_path):
    python = _venv(tmp_path / "env")
    (tmp_path / "daskprs.yaml").write_text(f"environments:\n  prep-env: {python}\n")
    job = _command_job(
        tmp_path,
        "python make.py ${{outputs.out}}",
        "import sys\nopen(sys.argv[1] + '/prefix.txt', 'w').write(sys.prefix)\n",
    )
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    assert result.ok, result.failure
    assert (tmp_path / "run/outputs/prep/out/prefix.txt").read_text() == str(tmp_path / "env")
    assert any(f"the command runs with {python.parent} first on PATH" in x for x in lines)


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (
            "python make.py ${{outputs.out}}",
            "the command runs make.py, which imports nosuchpkg_22 (line 2)",
        ),
        (
            "cd . && python -u -m nosuchmod_22 ${{outputs.out}}",
            "the command runs nosuchmod_22, which imports the module nosuchmod_22",
        ),
    ],
)
def test_a_command_s_missing_import_is_named_before_it_runs(tmp_path, command, named):
    job = _command_job(tmp_path, command, "import os\nimport nosuchpkg_22\nopen('ran', 'w')\n")
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert named in checked.output
    assert "environments:\n    prep-env: /path/to/env/bin/python" in checked.output
    ran = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(tmp_path / "run")])
    assert ran.exit_code == 2, ran.output
    assert named in ran.output
    assert not (tmp_path / "prep/ran").exists()


def test_a_mapped_interpreter_for_tabular_input_needs_fsspec(tmp_path):
    python = _venv(tmp_path / "env")
    site = next((tmp_path / "env/lib").glob("python*/site-packages"))
    for name in ("pandas", "pyarrow"):  # present as far as an import check can tell
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return []\n")
    args = (str(tmp_path / "code"), "score.py", str(python), "tab-env")
    check_entry_script("score", *args)  # a file list does not need it
    with pytest.raises(UserInputError, match=rf"lacks fsspec.*{python} -m pip install fsspec"):
        check_entry_script("score", *args, tabular=True)


# ------------------------------------------------------------------ data on Azure, over HTTPS

AZURE_JOB = """\
type: parallel
inputs:
  data: {{type: uri_folder, path: "{url}"}}
outputs:
  result: {{type: uri_folder}}
input_data: ${{{{inputs.data}}}}
task:
  type: run_function
  code: ./code
  entry_script: score.py
  append_row_to: ${{{{outputs.result}}}}
"""


@pytest.mark.parametrize(
    "url",
    [
        "wasbs://data@account.blob.core.windows.net/images",
        "abfss://data@account.dfs.core.windows.net/images",
        "abfs://data@account.dfs.core.windows.net/images",
        "az://data/images",
    ],
)
def test_azure_storage_without_adlfs_names_the_package(tmp_path, monkeypatch, url):
    monkeypatch.setitem(sys.modules, "adlfs", None)  # import adlfs raises ImportError
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "job.yml").write_text(AZURE_JOB.format(url=url))
    checked = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yml")])
    assert checked.exit_code == 2, checked.output
    protocol = url.split("://")[0]
    assert f"{protocol}:// URLs (Azure storage)" in checked.output
    assert "pip install adlfs" in checked.output


def test_an_azure_output_without_adlfs_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "adlfs", None)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    (tmp_path / "job.yml").write_text(
        AZURE_JOB.format(url="./data").replace(
            "result: {type: uri_folder}",
            "result: {type: uri_folder, path: wasbs://out@account.blob.core.windows.net/r}",
        )
    )
    checked = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yml")])
    assert checked.exit_code == 2, checked.output
    assert "wasbs:// URLs (Azure storage)" in checked.output
    assert "pip install adlfs" in checked.output


@pytest.mark.slow
def test_an_account_key_azure_storage_refuses_is_exit_2_naming_the_input(
    tmp_path, azurite, monkeypatch
):
    import base64

    from conftest import AZURITE_KEY

    azurite.mkdir("data")
    azurite.pipe("data/files/f.txt", b"x")
    wrong = base64.b64encode(b"not the account's key" * 3).decode()
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"].replace(AZURITE_KEY, wrong)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)  # Azurite's, on 127.0.0.1
    job = write_job(
        tmp_path,
        "def run(b):\n    return b\n",
        input_yaml="type: uri_folder\npath: abfs://data/files",
    )
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert "abfs://data/files: the object store refused access (HttpResponseError: " in (
        checked.output
    )
    assert "AZURE_STORAGE_CONNECTION_STRING" in checked.output
    assert "Traceback" not in checked.output and wrong not in checked.output


def test_azure_urls_go_through_adlfs_with_their_account():
    pytest.importorskip("adlfs")
    from daskprs.inputs.filesystems import filesystem
    from daskprs.inputs.listing import Storage

    for url, account in [
        ("wasbs://data@acct1.blob.core.windows.net/images/a.png", "acct1"),
        ("abfss://data@acct2.dfs.core.windows.net/images/a.png", "acct2"),
    ]:
        fs, path = filesystem(url, {"anon": True})  # no request is made
        assert type(fs).__name__ == "AzureBlobFileSystem"
        assert (fs.account_name, path) == (account, "data/images/a.png")
        storage = Storage({"anon": True}, None)
        storage.resolve(url)
        # the descriptors' URLs (abfs://data/images/a.png) lose the account: their options keep it
        assert storage.descriptor_options == {"account_name": account, "anon": True}


def test_an_azure_account_refusing_names_the_variables_not_options_never_given(monkeypatch):
    pytest.importorskip("adlfs")
    from azure.core.exceptions import ClientAuthenticationError

    from daskprs.errors import PlanningError
    from daskprs.inputs.listing import Storage

    # anonymous: no credential chain is asked for a token when the filesystem is made
    monkeypatch.setenv("AZURE_STORAGE_ANON", "true")
    url = "abfs://data@acct4.dfs.core.windows.net/x"
    for options, named in [(None, False), ({"anon": True}, True)]:
        storage = Storage(options, None)
        storage.resolve(url)  # (the account joins the options; no request is made)
        with pytest.raises(PlanningError) as err, storage.reaching():
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
        assert str(err.value).startswith(f"{url}: the object store refused access")
        assert ("storage_options given" in str(err.value)) == named


def test_a_credential_chain_s_warning_is_left_to_its_error(caplog):
    """DefaultAzureCredential's warning of 15 lines, once a request, says what the
    ClientAuthenticationError raised after it says, which validate and run report once."""
    pytest.importorskip("adlfs")
    import logging

    from daskprs.inputs.filesystems import filesystem

    filesystem("abfs://data@acct3.dfs.core.windows.net/x", {"anon": True})  # no request is made
    chained = logging.getLogger("azure.identity.aio._credentials.chained")
    with caplog.at_level(logging.DEBUG):
        chained.warning("DefaultAzureCredential failed to retrieve a token")
        chained.info("DefaultAzureCredential acquired a token from AzureCliCredential")
    assert [r.getMessage() for r in caplog.records] == [
        "DefaultAzureCredential acquired a token from AzureCliCredential"
    ]


# What azure-identity's DefaultAzureCredential reads (and adlfs's AZURE_STORAGE_*): none is set
# for a machine with no credentials
_IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET")


def test_an_azure_account_without_credentials_is_exit_2_at_once(tmp_path):
    """An Azure URL with an account and no key, SAS token or connection string, on a machine
    where no source of DefaultAzureCredential gives a token (no managed identity, no ``az
    login``): validate ends with exit 2 naming the variables to set after one walk of the
    credential chain, not after the blob client's retry policy ran it four times (about 85 s,
    more than the timeout here, which only a hang reaches)."""
    pytest.importorskip("adlfs")
    job = write_job(
        tmp_path, "def run(b):\n    return b\n", input_yaml="type: uri_folder\npath: abfs://data/x"
    )
    out = _validate_without_credentials(tmp_path, job)
    assert "abfs://data/x: the object store refused access (ClientAuthenticationError: " in out
    assert "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN" in out
    assert "Traceback" not in out


def _validate_without_credentials(tmp_path: Path, job: Path) -> str:
    """``daskprs validate job`` with an Azure account and no credentials at all (no
    ``AZURE_*`` variable but the account, no Azure CLI login of a developer's): it must end
    with exit 2; what it printed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AZURE_") and k not in _IDENTITY_VARIABLES
    }
    env |= {"HOME": str(tmp_path), "AZURE_CONFIG_DIR": str(tmp_path / "azure-cli")}
    env["AZURE_STORAGE_ACCOUNT_NAME"] = "daskprsnocredentials"
    done = subprocess.run(
        [sys.executable, "-m", "daskprs", "validate", str(job)],
        capture_output=True,
        text=True,
        timeout=40,  # (the credential chain's retries took about 85 s: only a hang reaches it)
        env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    return done.stdout + done.stderr


def _output_job(tmp_path: Path, url: str) -> Path:
    """A job over local files whose ``score.result`` (the rows) is the file ``url``."""
    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path, "def run(b):\n    return b\n", input_yaml="type: uri_folder\npath: ./data"
    )
    job.write_text(
        job.read_text().replace(
            "      result:\n        type: uri_file\n",
            f"      result:\n        type: uri_file\n        path: {url}\n",
        )
    )
    return job


def test_an_azure_output_without_credentials_is_exit_2_at_once(tmp_path):
    """An output on Azure with an account and no key, SAS token or connection string, where
    no source of DefaultAzureCredential gives a token: validate says so naming the output
    (it said "valid", and run ran the whole step before failing to write it: exit 1)."""
    pytest.importorskip("adlfs")
    job = _output_job(tmp_path, "abfs://out/r/rows.txt")
    out = _validate_without_credentials(tmp_path, job)
    assert (
        "cannot write the output score.result: abfs://out/r/rows.txt: the object store refused "
        "access (ClientAuthenticationError: "
    ) in out
    assert "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_an_azure_output_container_missing_or_refusing_is_exit_2(tmp_path, azurite, monkeypatch):
    import base64

    from conftest import AZURITE_KEY

    azurite.mkdir("out")
    job = _output_job(tmp_path, "abfs://nowhere/r/rows.txt")
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert (
        "cannot write the output score.result: abfs://nowhere/r/rows.txt: the container nowhere "
        "does not exist (ResourceNotFoundError: "
    ) in checked.output
    job.write_text(job.read_text().replace("abfs://nowhere/", "abfs://out/"))
    assert CliRunner().invoke(cli, ["validate", str(job)]).exit_code == 0
    assert azurite.find("out") == []  # the check's object removed
    wrong = base64.b64encode(b"not the account's key" * 3).decode()
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"].replace(AZURITE_KEY, wrong)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert "abfs://out/r/rows.txt: the object store refused access (" in checked.output
    assert "AZURE_STORAGE_CONNECTION_STRING" in checked.output
    assert "Traceback" not in checked.output and wrong not in checked.output


class _TokenCredential:
    """An async token credential (azure-core's ``AsyncTokenCredential``) that records the
    scopes it is asked for, and gives a token or refuses as a chain none of whose sources
    gives one. Asked again after refusing, it raises a RuntimeError, which the blob client's
    retry policy (it retries an ``AzureError``) lets through."""

    def __init__(self, gives: bool):
        self.gives = gives
        self.asked: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs):
        import time

        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        self.asked.append(scopes)
        if self.gives:
            return AccessToken("a-token", int(time.time()) + 3600)
        if len(self.asked) > 1:
            raise RuntimeError(f"asked {len(self.asked)} times: the blob client retried")
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    async def close(self) -> None:
        pass


def test_a_credential_that_gives_no_token_is_asked_once_and_named(monkeypatch):
    """The token credential adlfs authenticates with (here one given in the storage options)
    is asked once, before any request: its refusal is the planner's refusal naming the URL,
    not the first request's, which the blob client retried three times, 15 s and more apart."""
    pytest.importorskip("adlfs")
    from daskprs.errors import PlanningError
    from daskprs.inputs.listing import list_files
    from daskprs.job.model import DataInput

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    credential = _TokenCredential(gives=False)
    url = "abfs://data@acct5.dfs.core.windows.net/x"
    with pytest.raises(PlanningError) as err:
        list_files(DataInput("data", "uri_folder", url), storage_options={"credential": credential})
    assert str(err.value).startswith(
        f"{url}: the object store refused access (ClientAuthenticationError: "
    )
    assert credential.asked == [("https://storage.azure.com/.default",)]


def test_a_credential_is_asked_for_the_blob_client_s_scope_once_a_filesystem(monkeypatch):
    """A credential that gives a token is asked for the scope the blob client asks for (the
    credential keeps the token for it), once for the filesystem daskprs keeps; an account key,
    a SAS token, a connection string and anonymous access ask no credential."""
    pytest.importorskip("adlfs")
    from conftest import AZURITE_KEY

    from daskprs.inputs.filesystems import filesystem

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    credential = _TokenCredential(gives=True)
    for _ in range(2):
        fs, _path = filesystem(
            "abfs://data@acct6.dfs.core.windows.net/x", {"credential": credential}
        )
        assert fs.credential is credential
    assert credential.asked == [("https://storage.azure.com/.default",)]
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct7;AccountKey={AZURITE_KEY}"
    for options in [
        {"account_key": AZURITE_KEY},
        {"sas_token": "sv=2024-01-01&sig=x"},
        {"connection_string": conn},
        {"anon": True},
    ]:
        fs, _path = filesystem("abfs://data@acct7.dfs.core.windows.net/x", options)  # no request
        assert fs.credential is None


def test_an_unmapped_datastore_is_said_once_and_named_when_an_input_is_missing(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    job = tmp_path / "job.yml"
    job.write_text(
        AZURE_JOB.format(url="./data").replace(
            "result: {type: uri_folder}",
            "result: {type: uri_folder, path: "
            '"azureml://datastores/${{default_datastore}}/paths/out/${{name}}"}\n'
            "  other: {type: uri_folder, path: azureml://datastores/workspaceblobstore/paths/o2}",
        )
    )
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 0, checked.output
    note = "azureml://datastores/workspaceblobstore: not mapped in daskprs.yaml"
    assert checked.output.count(note) == 1, checked.output
    assert "`datastores: {workspaceblobstore: <folder or URL>}`" in checked.output

    job.write_text(AZURE_JOB.format(url="azureml://datastores/lake/paths/images"))
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert "the datastore lake of azureml://datastores/lake/paths/images is not mapped" in (
        checked.output
    )
    assert "`datastores: {lake: <folder or URL>}`" in checked.output


@pytest.fixture
def https_folder(tmp_path):
    """A folder served over HTTPS on 127.0.0.1 by this process, with a certificate made here
    (``<tmp_path>/cert.pem``, for SSL_CERT_FILE); yields (folder, base URL)."""
    import datetime
    import functools
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_https_file_with_a_sas_token_reaches_run_under_its_own_name(tmp_path, https_folder):
    folder, base = https_folder
    (folder / "scan.png").write_bytes(b"not really a png")
    (folder / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(
        "import os\n\ndef run(mini_batch):\n"
        "    return [f'{os.path.basename(p)} {open(p, \"rb\").read().decode()}'"
        " for p in mini_batch]\n"
    )
    job = tmp_path / "job.yml"
    job.write_text(
        AZURE_JOB.format(url=f"{base}/scan.png?sv=2024-05-04&sig=c2VjcmV0").replace(
            "uri_folder, path", "uri_file, path"
        )
    )
    # a process of its own: aiohttp reads SSL_CERT_FILE when it is imported
    env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "cert.pem")}
    args = [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(tmp_path / "run")]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "c2VjcmV0" not in proc.stderr
    lines = (tmp_path / "run/outputs/job/result/parallel_run_step.txt").read_text()
    assert lines.splitlines() == ["scan.png not really a png"]


# ------------------------------------------------------------------ what scripts see

SEES = """
import logging
import os
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    logging.info("scoring %d files", len(mini_batch))
    logging.debug("not at INFO")
    es = EntryScript()
    return [
        " ".join([
            es.agent_name,
            str(os.path.isdir(os.path.join(es.working_dir, "logs"))),
            str(os.environ["AZUREML_BI_OUTPUT_PATH"] == es.output_dir),
            os.environ["AZ_BATCHAI_GPU_COUNT_FOUND"],
        ])
    ]
"""


def test_scripts_see_what_azure_gives_them(tmp_path, client):
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, SEES, input_yaml="type: uri_folder\npath: ./data")
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    agent, logs, same_output, gpus = output_of(tmp_path / "run").read_text().split()
    # Azure's form: the process's name alone ("processNNN" on the embedded cluster)
    assert re.fullmatch(r"process[-\w]+", agent) and not agent.startswith("node")
    assert (logs, same_output, gpus) == ("True", "True", "0")
    stdout = "".join(p.read_text() for p in (tmp_path / "run/logs/user/stdout").rglob("*.txt"))
    assert "INFO root: scoring 2 files" in stdout
    assert "not at INFO" not in stdout


# ------------------------------------------------------------------ driver arguments


def test_driver_arguments_name_the_output_file_or_are_noted_as_not_applied(tmp_path, client):
    job = _cat_job(tmp_path)
    args = (
        "      program_arguments: --append_row_file_name Scores.TXT --process_count_per_node 4 "
        "--mini_batch_size 5 --partition_keys Store --nice\n"
    )
    job.write_text(job.read_text().replace("      append_row_to:", args + "      append_row_to:"))
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 0, checked.output
    for name, field in [
        ("--process_count_per_node", "max_concurrency_per_instance"),
        ("--mini_batch_size", "mini_batch_size"),
        ("--partition_keys", "partition_keys"),
    ]:
        assert re.search(rf"{name} accepted; not applied: .*{field}", checked.output), name
    assert "--nice accepted; not applied" in checked.output

    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    written = tmp_path / "run/outputs/score/job_output_file/scores.txt"  # lower-cased, as Azure
    assert written.read_text().splitlines() == ["d0.txt 0", "d1.txt 1", "d2.txt 2"]
    assert result.outputs["score.job_output_file"] == str(written)
    # the later step reads that file
    seen = tmp_path / "run/outputs/show/copy/seen.txt"
    assert seen.read_text() == written.read_text()


def test_an_append_row_file_name_with_a_folder_is_refused(tmp_path):
    job = _cat_job(tmp_path)
    args = "      program_arguments: --append_row_file_name=../x.txt\n"
    job.write_text(job.read_text().replace("      append_row_to:", args + "      append_row_to:"))
    checked = CliRunner().invoke(cli, ["validate", str(job)])
    assert checked.exit_code == 2, checked.output
    assert "'../x.txt' is not a file name" in checked.output
