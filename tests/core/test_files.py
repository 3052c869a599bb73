"""fedcloud.core.files: bounded reads, the strict YAML loader, short(), atomic writes.

Also the hostile stack files through ``load_stack`` and the CLI: each must end in the project's
one-line error, quickly, never a traceback, a hang or a 10 MB message.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from fedcloud.cli.main import main
from fedcloud.core import files
from fedcloud.core.config import PROJECT_FILE, ROOT, available_stacks, load_stack
from fedcloud.core.errors import AuthError, ConfigError, FedcloudError
from fedcloud.core.files import (
    STACK_FILE_MAX_BYTES,
    YAML_MAX_DEPTH,
    YAML_MAX_KEY_CHARS,
    YAML_MAX_NODES,
    load_yaml,
    read_bounded,
    short,
    write_atomic,
    write_json_atomic,
)

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


def one_line(exc: FedcloudError, limit: int = 500) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < limit, text[:600]
    assert "To fix:" in text
    return text


def fifo(path: Path) -> Path:
    os.mkfifo(path)  # no writer: opening it for reading would block forever
    return path


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# -- read_bounded ---------------------------------------------------------------------------

def test_read_bounded_returns_the_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "f", b"abc\x00\xff")
    assert read_bounded(path, 5, "a test file") == b"abc\x00\xff"


def test_read_bounded_refuses_over_the_limit_and_states_it(tmp_path: Path) -> None:
    path = write(tmp_path, "f", b"x" * (STACK_FILE_MAX_BYTES + 1))
    with pytest.raises(ConfigError, match=r"is 1\.0 MiB, over the 1 MiB limit for a stack file"):
        read_bounded(path, STACK_FILE_MAX_BYTES, "a stack file")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["directory", "fifo", "/dev/zero", "missing"])
def test_read_bounded_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = {"directory": tmp_path, "/dev/zero": Path("/dev/zero"),
            "missing": tmp_path / "nope"}.get(kind, tmp_path / "fifo")
    if kind == "fifo":
        fifo(path)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        read_bounded(path, 1024, "a stack file")
    assert time.monotonic() - start < 1
    text = one_line(info.value)
    assert str(path) in text
    expected = {"directory": "is a directory", "fifo": "is a FIFO", "/dev/zero":
                "is a character device", "missing": "not found"}[kind]
    assert expected in text


def test_read_bounded_raises_the_class_asked_for_with_the_prefix(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=r"^aws: .* is a directory, not a credential file\."):
        read_bounded(tmp_path, 10, "a credential file", error=AuthError, prefix="aws: ")
    with pytest.raises(AuthError, match=r"To fix: delete it\.$"):
        read_bounded(tmp_path, 10, "a record", error=AuthError, fix="delete it.")


# -- short ----------------------------------------------------------------------------------

def test_short_cuts_a_10_mb_value_quickly() -> None:
    value = "n" * 10_000_000
    start = time.monotonic()
    text = short(value)
    assert time.monotonic() - start < 0.1
    assert len(text) == 40 and text.endswith("...") and text.startswith("nnn")


def test_short_keeps_short_values_and_escapes_control_characters() -> None:
    assert short("aws") == "aws"
    assert short("a\nb\x00c") == "a\\nb\\x00c"
    assert short(["x"] * 100, 10) == "['x', '..."
    assert short(12) == "12"


# -- load_yaml ------------------------------------------------------------------------------

def test_load_yaml_reads_plain_yaml_with_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml",
                 "\ufeffconfig:\r\n  a: [1, 2.5, true, null, x]\r\n  b: {c: d}\r\n")
    assert load_yaml(path) == {"config": {"a": [1, 2.5, True, None, "x"], "b": {"c": "d"}}}
    assert load_yaml(write(tmp_path, "empty.yaml", "")) is None


def test_load_yaml_names_the_byte_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", b"config:\n  fedcloud:clouds: [a\xffb]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: byte 29 \(line 2, value 0xff\) is not UTF-8\."
                       r" To fix: save the file as UTF-8\."):
        load_yaml(path)


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.yaml", ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1024
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"line 1, column 4: YAML anchor &a is not accepted"):
        load_yaml(path)
    assert time.monotonic() - start < 0.5


def test_an_alias_alone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"YAML alias \*x is not accepted"):
        load_yaml(write(tmp_path, "a.yaml", "a: 1\nb: *x\n"))


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2, column 3: merge keys \(<<\) are not accepted"):
        load_yaml(write(tmp_path, "m.yaml", "a:\n  <<: {b: 1}\n"))


@pytest.mark.parametrize(("text", "key", "line"), [
    ("config:\n  fedcloud:clouds: [aws]\n  fedcloud:clouds: [gcp]\n", "fedcloud:clouds", 3),
    ("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n", "c", 5),
    ("{1: a, 1.0: b}\n", "1.0", 1),  # equal once read: a dict would keep one silently
    ("!!set {x, x}\n", "x", 1),
])
def test_duplicate_keys_are_refused_with_key_and_line(tmp_path: Path, text: str, key: str,
                                                       line: int) -> None:
    with pytest.raises(ConfigError, match=rf"line {line}, column \d+: duplicate key '{key}' "
                       r"\(first at line \d+\)\. To fix: keep one of the two entries\."):
        load_yaml(write(tmp_path, "d.yaml", text))


def test_nesting_is_bounded(tmp_path: Path) -> None:
    ok = "[" * (YAML_MAX_DEPTH - 1) + "]" * (YAML_MAX_DEPTH - 1)
    assert load_yaml(write(tmp_path, "ok.yaml", f"a: {ok}\n")) is not None
    deep = "[" * YAML_MAX_DEPTH + "]" * YAML_MAX_DEPTH
    with pytest.raises(ConfigError, match=f"nested deeper than {YAML_MAX_DEPTH} levels"):
        load_yaml(write(tmp_path, "deep.yaml", f"a: {deep}\n"))
    block = "".join(" " * i + f"k{i}:\n" for i in range(YAML_MAX_DEPTH + 5))
    with pytest.raises(ConfigError, match=f"nested deeper than {YAML_MAX_DEPTH} levels"):
        load_yaml(write(tmp_path, "block.yaml", block))


def test_very_deep_flow_nesting_is_refused_quickly(tmp_path: Path) -> None:
    path = write(tmp_path, "d.yaml", "a: " + "[" * 200_000 + "]" * 200_000 + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert time.monotonic() - start < 2
    one_line(info.value)


def test_node_count_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "n.yaml", "a: [" + ",".join(["1"] * (YAML_MAX_NODES + 10)) + "]\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"more than {YAML_MAX_NODES} values"):
        load_yaml(path)
    assert time.monotonic() - start < 5


def test_long_keys_are_refused_and_not_echoed(tmp_path: Path) -> None:
    key = "k" * 900_000
    path = write(tmp_path, "k.yaml", f"config:\n  ? fedcloud:{key}\n  : 1\n")
    with pytest.raises(ConfigError, match=f"characters long, over {YAML_MAX_KEY_CHARS}") as info:
        load_yaml(path)
    one_line(info.value, 300)


@pytest.mark.parametrize(("text", "match"), [
    ("config:\n  a: [1, 2\n", r"line 3, column 1 is not valid YAML \(did not find expected"),
    ("config:\n  a: b\x00\n", r"line 2, column 7 is not valid YAML \(unacceptable character "
     r"#x0000\)"),
    ("a: !!python/object/apply:os.system [true]\n", r"line 1, column 4 is not valid YAML "
     r"\(could not determine a constructor"),
    ("a: !" + "t" * 5000 + " x\n", r"is not valid YAML \(could not determine a constructor for "
     r"the tag '!tttt.*\.\.\.\)"),
    ("a: 2001-02-30\n", r"line 1, column 4: the value '2001-02-30' cannot be read as timestamp "
     r"\(day is out of range for month\)\. To fix: quote it"),
    ("a: !!timestamp junk\n", r"the value 'junk' cannot be read as timestamp\. To fix"),
    ("a: !!bool maybe\n", r"the value 'maybe' cannot be read as bool\."),
    ("a: " + "9" * 5000 + "\n", r"the value '9999.*\.\.\.' cannot be read as int \(Exceeds the "
     r"limit"),
    ("? [a]\n: 1\n", r"line 1, column 3: a mapping key is a list or a mapping"),
])
def test_malformed_yaml_gives_one_line_with_the_position(tmp_path: Path, text: str,
                                                         match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_yaml(write(tmp_path, "bad.yaml", text))
    one_line(info.value)


def test_project_file_and_every_stack_load_strictly() -> None:
    assert isinstance(load_yaml(PROJECT_FILE), dict)
    for name in available_stacks():
        assert load_stack(name).values


# -- hostile stack files through load_stack and the CLI -------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", ["non-utf8", "directory", "/dev/zero", "fifo", "10MB",
                                  "alias-bomb", "duplicate-key", "10MB-name", "900KB-name",
                                  "utf16"])
def test_hostile_stack_files_give_one_short_line_quickly(tmp_path: Path, case: str) -> None:
    name = "n" * 10_000_000
    path = {
        "non-utf8": lambda: write(tmp_path, "s.yaml", b"config:\n  fedcloud:clouds: [\xff]\n"),
        "directory": lambda: tmp_path,
        "/dev/zero": lambda: Path("/dev/zero"),
        "fifo": lambda: fifo(tmp_path / "f.yaml"),
        "10MB": lambda: write(tmp_path, "s.yaml", "config:\n  fedcloud:clouds: '"
                              + "a" * 10_000_000 + "'\n"),
        "alias-bomb": lambda: write(tmp_path, "s.yaml", "config:\n  fedcloud:participants:\n"
                                    + "".join("    " + line + "\n"
                                              for line in ALIAS_BOMB.splitlines())),
        "duplicate-key": lambda: write(tmp_path, "s.yaml", "config:\n  fedcloud:clouds: [aws]\n"
                                       "  fedcloud:clouds: [gcp]\n"),
        "10MB-name": lambda: write(tmp_path, "s.yaml", f"config:\n  ? fedcloud:{name}\n  : 1\n"),
        "900KB-name": lambda: write(tmp_path, "s.yaml", f"config:\n  ? {name[:900_000]}\n  : 1\n"),
        "utf16": lambda: write(tmp_path, "s.yaml", "config: {}\n".encode("utf-16")),
    }[case]()
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_stack(path=path)
    assert time.monotonic() - start < 2
    text = one_line(info.value, 300)
    assert str(path) in text
    assert "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" not in text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["directory", "/dev/zero"])
def test_cli_given_a_hostile_config_prints_one_line(tmp_path: Path, target: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path) if target == "directory" else target
    code = main(["plan", "--config", path])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("fedcloud: error: ")
    assert "Traceback" not in err and path in err


# -- atomic writes --------------------------------------------------------------------------

def test_write_atomic_replaces_with_the_exact_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.bin"
    write_atomic(path, b"one", mode=0o600)
    write_atomic(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"v": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_json_atomic_format(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    write_json_atomic(path, {"b": 1, "a": ["é"]})
    assert path.read_text(encoding="utf-8") == '{\n  "a": [\n    "é"\n  ],\n  "b": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- both parsers: libyaml's and the pure-Python fallback -----------------------------------

@pytest.mark.parametrize("loader", [files._StrictLoader, files._PyStrictLoader],
                         ids=["default", "pure-python"])
@pytest.mark.parametrize(("text", "match"), [
    (ALIAS_BOMB, "YAML anchor &a is not accepted"),
    ("a: 1\na: 2\n", r"line 2, column 1: duplicate key 'a' \(first at line 1\)"),
    # libyaml's scanner may stop first, at its own limit (1000 levels)
    ("a: " + "[" * 100_000 + "]" * 100_000,
     f"nested deeper than {YAML_MAX_DEPTH} levels|exceeded maximum nesting depth"),
    ("a: [1, 2\n", "is not valid YAML"),
    ("a: b\x00\n", r"line 1, column 5 is not valid YAML \(unacceptable character #x0000\)"),
    ("a: 2001-02-30\n", "cannot be read as timestamp"),
])
def test_both_parsers_apply_the_same_rules(loader: type, text: str, match: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=match) as info:
        files._parse(text, "s.yaml", "a stack file", loader)
    assert time.monotonic() - start < 2
    one_line(info.value)


@pytest.mark.parametrize("loader", [files._StrictLoader, files._PyStrictLoader],
                         ids=["default", "pure-python"])
def test_both_parsers_read_a_real_stack(loader: type) -> None:
    text = (ROOT / "stacks" / "Pulumi.local.yaml").read_text(encoding="utf-8")
    assert files._parse(text, "s.yaml", "a stack file", loader) == load_yaml(
        ROOT / "stacks" / "Pulumi.local.yaml")
