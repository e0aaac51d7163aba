"""The ``ssr`` command line: clear errors and exit codes, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker import datadir
from broker.config import BrokerConfig
from broker.core import KeyRecord, SigningKeyPair, sign_directory, successor
from broker.errors import ConfigError
from clients import _inputs
from clients._errors import ConfigurationError
from clients.cli import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_INPUT_BYTES,
    CliError,
    _read,
    _time,
    main,
)

from .conftest import NOW

VECTORS = Path(__file__).resolve().parent.parent / "schemas" / "vectors"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_new_writes_a_private_file_and_show_reads_it(tmp_path, capsys):
    path = tmp_path / "nacka.key"
    code, out, _ = run(capsys, "--json", "keys", "new", "--principal", "nacka", "--out", str(path))
    assert code == EXIT_OK
    created = json.loads(out)
    assert created["principal"] == "nacka"
    assert os.stat(path).st_mode & 0o777 == 0o600
    code, out, _ = run(capsys, "--json", "keys", "show", str(path))
    assert code == EXIT_OK
    assert json.loads(out) == created
    assert path.read_text() not in out  # the secret never reaches stdout


def test_keys_new_refuses_to_overwrite_and_bad_principal(tmp_path, capsys):
    path = tmp_path / "k"
    assert run(capsys, "keys", "new", "--principal", "nacka", "--out", str(path))[0] == EXIT_OK
    code, _, err = run(capsys, "keys", "new", "--principal", "nacka", "--out", str(path))
    assert code == EXIT_USAGE
    assert "refusing to overwrite" in err
    code, _, err = run(
        capsys, "keys", "new", "--principal", "Nacka Kommun", "--out", str(tmp_path / "x")
    )
    assert code == EXIT_USAGE
    assert "must be a slug" in err


def test_keys_show_refuses_a_readable_key_file(tmp_path, capsys):
    path = tmp_path / "k"
    run(capsys, "keys", "new", "--principal", "nacka", "--out", str(path))
    path.chmod(0o644)
    code, _, err = run(capsys, "keys", "show", str(path))
    assert code == EXIT_USAGE
    assert "chmod 600" in err
    assert "Traceback" not in err


def test_policy_check(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('id = "ssr"\nversion = 2\nceiling = "INTERN"\n')
    code, out, _ = run(capsys, "policy", "check", str(good))
    assert code == EXIT_OK
    assert "ceiling INTERN" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "ssr"\n[limits]\nmax_recipients = "many"\n')
    code, _, err = run(capsys, "policy", "check", str(bad))
    assert code == EXIT_CHECK_FAILED
    assert "limits.max_recipients" in err
    assert "line 3" in err
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert run(capsys, "policy", "check", str(binary))[0] == EXIT_USAGE
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "missing.toml"))
    assert code == EXIT_USAGE
    assert "No such file" in err


def test_shipped_example_policy_is_valid(capsys):
    example = Path(__file__).resolve().parent.parent / "deploy" / "policy.toml"
    assert run(capsys, "policy", "check", str(example))[0] == EXIT_OK


def write_chain(region, tmp_path: Path, signer: SigningKeyPair) -> list[str]:
    v1 = tmp_path / "v1.dir"
    v1.write_bytes(region.frame)
    new_authority = (
        *region.directory.document.authority_keys,
        KeyRecord.for_key(SigningKeyPair.generate().public, not_before=NOW, not_after=NOW + 10**10),
    )
    v2 = tmp_path / "v2.dir"
    document = successor(region.directory, issued=NOW + 1, authority_keys=new_authority)
    v2.write_bytes(sign_directory(document, signer))
    return [str(v1), str(v2)]


def test_directory_verify(region, tmp_path, capsys):
    files = write_chain(region, tmp_path, region.authority)
    key = region.authority.public.hex()
    code, out, _ = run(capsys, "--json", "directory", "verify", "--authority-key", key, *files)
    assert code == EXIT_OK
    assert json.loads(out)["version"] == 2
    assert json.loads(out)["actors"] == 37
    key_file = tmp_path / "authority.pub"
    key_file.write_text(key + "\n")
    code, out, _ = run(capsys, "directory", "verify", "--authority-key", str(key_file), *files)
    assert code == EXIT_OK
    assert "v2 verifies" in out


def test_directory_verify_refuses_forgery_and_bad_keys(region, tmp_path, capsys):
    files = write_chain(region, tmp_path, SigningKeyPair.generate())
    key = region.authority.public.hex()
    code, _, err = run(capsys, "directory", "verify", "--authority-key", key, *files)
    assert code == EXIT_CHECK_FAILED
    assert "directory_unknown_signer" in err
    code, _, err = run(capsys, "directory", "verify", "--authority-key", "zz" * 32, files[0])
    assert code == EXIT_USAGE
    assert "64 hex digits" in err
    garbage = tmp_path / "garbage.dir"
    garbage.write_bytes(os.urandom(300))
    code, _, err = run(capsys, "directory", "verify", "--authority-key", key, str(garbage))
    assert code == EXIT_CHECK_FAILED
    assert "directory_malformed" in err


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("ab" * 31, "not 64 hex digits, nor a readable file"),
        ("ab" * 33, "not 64 hex digits, nor a readable file"),
        ("{tmp}", "a folder, not a file"),
        ("{tmp}/short.pub", "need the authority public key as 64 hex digits"),
        ("{tmp}/bad-hex.pub", "need the authority public key as 64 hex digits"),
        ("{tmp}/binary.pub", "need the authority public key as 64 hex digits"),
        ("{tmp}/huge.pub", "larger than 4096 bytes"),
        ("/dev/zero", "larger than 4096 bytes"),
    ],
)
def test_hostile_authority_keys_are_usage_errors(region, tmp_path, capsys, key, message):
    (tmp_path / "short.pub").write_text("ab" * 31 + "\n")
    (tmp_path / "bad-hex.pub").write_text("zz" * 32 + "\n")
    (tmp_path / "binary.pub").write_bytes(os.urandom(64))
    (tmp_path / "huge.pub").write_text(" " * 10_000 + region.authority.public.hex())
    files = write_chain(region, tmp_path, region.authority)
    argv = ["directory", "verify", "--authority-key", key.format(tmp=tmp_path), *files]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert message in err
    assert "Traceback" not in err


def test_one_authority_key_parser_for_broker_client_and_cli(region, tmp_path, capsys):
    """The broker's data folder, the client library and ``ssr`` read the key alike."""
    config = BrokerConfig(data_dir=tmp_path)
    good = region.authority.public
    config.authority_key_file.write_text(f"  {good.hex().upper()}\r\n", encoding="ascii")
    assert datadir.pinned_authority(config) == good
    assert _inputs.authority_key(config.authority_key_file) == good
    assert _inputs.authority_key(str(config.authority_key_file)) == good
    assert _inputs.authority_key(good.hex()) == good
    assert _inputs.authority_key(good) == good
    config.authority_key_file.write_text("zz" * 32, encoding="ascii")
    with pytest.raises(ConfigError) as broker_error:
        datadir.pinned_authority(config)
    assert broker_error.value.field == "authority_key"
    with pytest.raises(ConfigurationError) as client_error:
        _inputs.authority_key(config.authority_key_file)
    assert client_error.value.code == "authority_key"
    assert client_error.value.message == broker_error.value.message
    files = write_chain(region, tmp_path, region.authority)
    pinned = str(config.authority_key_file)
    code, _, err = run(capsys, "directory", "verify", "--authority-key", pinned, *files)
    assert code == EXIT_USAGE
    assert broker_error.value.message in err


def test_bounded_read_stops_at_the_bound_whatever_the_file(tmp_path):
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as file:
        file.truncate(MAX_INPUT_BYTES + 1)  # refused from its size, before it is read
    for path in (sparse, Path("/dev/zero")):
        with pytest.raises(CliError, match=f"larger than {MAX_INPUT_BYTES} bytes"):
            _read(path)
    with pytest.raises(CliError, match=r"policy .*: larger than 3 bytes"):
        _read(Path("/dev/zero"), 3, "policy")
    with pytest.raises(CliError, match="Is a directory"):
        _read(tmp_path)
    (tmp_path / "three").write_bytes(b"abc")
    assert _read(tmp_path / "three", 3) == b"abc"


@pytest.mark.parametrize(
    ("value", "options", "expected"),
    [
        ("2026-09-21T14:13:20Z", {}, NOW),
        (" 2026-09-21T16:13:20.000+02:00 ", {}, NOW),
        ("now", {"now": 42}, 42),
        ("1790000000000", {"epoch_ms": True}, NOW),
        ("now", {}, "'now': not an ISO 8601 time"),
        ("yesterday", {"epoch_ms": True}, "not an ISO 8601 time or epoch milliseconds"),
        ("yesterday", {"now": 1}, "not an ISO 8601 time (or 'now')"),
        ("1790000000000", {}, "not an ISO 8601 time"),
        ("2026-09-21T14:13:20", {}, "has no UTC offset"),
        ("1969-12-31T23:59:59Z", {}, "out of range"),
        ("9" * 20, {"epoch_ms": True}, "out of range"),
    ],
)
def test_times_are_iso_8601_with_an_offset(value, options, expected):
    if isinstance(expected, int):
        assert _time(value, "--at", **options) == expected
    else:
        with pytest.raises(CliError, match=re.escape(f"--at {value!r}")) as info:
            _time(value, "--at", **options)
        assert expected in str(info.value)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["keys"])
    assert caught.value.code == EXIT_USAGE


def test_installed_entry_point_runs():
    ssr = Path(sys.executable).with_name("ssr")
    result = subprocess.run([str(ssr), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "directory" in result.stdout
