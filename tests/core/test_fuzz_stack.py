"""Property-based fuzzing of the stack loader (``load_stack(path=...)``) with hypothesis.

Whatever the file holds (random bytes, YAML-like noise, mutations of a real stack, random valid
structures under ``config:``, deep nesting, huge strings, anchors and aliases, duplicate keys),
the loader either returns a :class:`RawConfig` or raises the project's own error: one line,
shorter than ``MAX_MESSAGE_CHARS``, within the hypothesis ``deadline`` per input. Runs are
derandomized (the same examples every run) and keep no example database on disk.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedcloud.core.config import ROOT, RawConfig, load_stack, project_declarations
from fedcloud.core.errors import ConfigError, FedcloudError
from fedcloud.core.files import STACK_FILE_MAX_BYTES, YAML_MAX_DEPTH

MAX_MESSAGE_CHARS = 500
DEADLINE_MS = 2000
FUZZ = settings(deadline=DEADLINE_MS, derandomize=True, database=None, print_blob=False,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DECLARED = sorted(project_declarations())
REAL_STACK = (ROOT / "stacks" / "Pulumi.local.yaml").read_bytes()
YAMLISH = [*"abz09:-[]{},?&*!|>'\"%@`#\n\t \\.", "é", "\x00", "\ufeff", "\u2028", "\x85", "\x7f",
           "\U0001f600"]
EXAMPLES: dict[str, int] = {}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


@pytest.fixture(scope="module")
def stack_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    start = time.monotonic()
    yield tmp_path_factory.mktemp("fuzz-stack") / "Pulumi.fuzz.yaml"
    total = sum(EXAMPLES.values())
    print(f"\nstack loader fuzz: {total} examples {EXAMPLES} in {time.monotonic() - start:.1f} s")


def check(path: Path, data: bytes, label: str) -> RawConfig | FedcloudError:
    """Write ``data``, load it; return the result or the error (a one-line FedcloudError)."""
    EXAMPLES[label] = EXAMPLES.get(label, 0) + 1
    path.write_bytes(data)
    try:
        return load_stack(path=path)
    except FedcloudError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text, text[:MAX_MESSAGE_CHARS]
        assert len(text) < MAX_MESSAGE_CHARS, text[:MAX_MESSAGE_CHARS]
        assert str(path) in text and "To fix:" in text, text
        return exc


scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=40) | st.sampled_from(["aws", "gcp:europe-west1", "1e9", "0x1f",
                                                      "2001-02-30", "~", "yes", "<<"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=4),
                      max_leaves=25)
config_keys = (st.sampled_from(DECLARED).map(lambda k: f"fedcloud:{k}")
               | st.text(max_size=20).map(lambda k: f"fedcloud:{k}")
               | st.sampled_from(["aws:region", "gcp:project", "plain", ""])
               | st.text(max_size=20))


@settings(FUZZ, max_examples=250)
@given(config=st.dictionaries(config_keys, values, max_size=8),
       extra=st.dictionaries(st.sampled_from(["secretsprovider", "encryptionsalt", "x"]), values,
                             max_size=2),
       unicode=st.booleans(), flow=st.sampled_from([None, True, False]))
def test_random_valid_structures(stack_path: Path, config: dict[str, Any], extra: dict[str, Any],
                                 unicode: bool, flow: bool | None) -> None:
    doc = {"config": config, **extra}
    text = yaml.dump(doc, Dumper=_NoAliasDumper, allow_unicode=unicode, default_flow_style=flow)
    result = check(stack_path, text.encode("utf-8"), "structures")
    if isinstance(result, RawConfig):
        namespaced = {k.split(":", 1)[1] for k in config if k.startswith("fedcloud:")}
        assert namespaced <= set(DECLARED)


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=3000), prefix=st.sampled_from([b"", b"config:\n  ",
                                                               b"config:\n  fedcloud:clouds: "]))
def test_random_bytes(stack_path: Path, data: bytes, prefix: bytes) -> None:
    check(stack_path, prefix + data, "bytes")


@settings(FUZZ, max_examples=200)
@given(text=st.text(alphabet=st.sampled_from(YAMLISH), max_size=400))
def test_yaml_like_noise(stack_path: Path, text: str) -> None:
    check(stack_path, ("config:\n  " + text).encode("utf-8", "surrogatepass"), "noise")


@settings(FUZZ, max_examples=200)
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "dup"]),
                                st.integers(0, len(REAL_STACK) - 1), st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_mutations_of_a_real_stack(stack_path: Path, edits: list[tuple[str, int, int]]) -> None:
    data = bytearray(REAL_STACK)
    for op, pos, byte in edits:
        pos = min(pos, max(len(data) - 1, 0))
        if op == "flip" and data:
            data[pos] ^= byte or 1
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and data:
            del data[pos]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + 40]
    check(stack_path, bytes(data), "mutations")


@settings(FUZZ, max_examples=60)
@given(depth=st.integers(1, 5000), style=st.sampled_from(["seq", "map", "block", "dash"]))
def test_deep_nesting(stack_path: Path, depth: int, style: str) -> None:
    if style == "seq":
        value = "[" * depth + "]" * depth
    elif style == "map":
        value = "{a: " * depth + "1" + "}" * depth
    elif style == "block":
        value = "\n" + "".join(" " * (4 + i) + f"k{i}:\n" for i in range(depth)) + " " * (
            4 + depth) + "1"
    else:
        value = "\n" + "".join(" " * (4 + 2 * i) + "-\n" for i in range(depth))
    data = f"config:\n  fedcloud:participants: {value}\n".encode()
    result = check(stack_path, data, "nesting")
    if depth > YAML_MAX_DEPTH and len(data) <= STACK_FILE_MAX_BYTES:
        assert isinstance(result, ConfigError)
        assert "deeper than" in str(result) or "nesting" in str(result)


@settings(FUZZ, max_examples=40)
@given(size=st.integers(0, 3 * STACK_FILE_MAX_BYTES), where=st.sampled_from(["value", "key",
                                                                              "quoted-key"]))
def test_huge_strings(stack_path: Path, size: int, where: str) -> None:
    big = "n" * size
    data = {"value": f"config:\n  fedcloud:clouds: '{big}'\n",
            "key": f"config:\n  ? fedcloud:{big}\n  : 1\n",
            "quoted-key": f"config:\n  '{big}': 1\n"}[where].encode()
    result = check(stack_path, data, "huge")
    if len(data) > STACK_FILE_MAX_BYTES:
        assert "over the 1 MiB limit for a stack file" in str(result)


@settings(FUZZ, max_examples=25)
@given(anchor=st.text(alphabet="abcxyz0129_-", min_size=1, max_size=20),
       fanout=st.integers(1, 12), levels=st.integers(1, 9), nested=st.booleans())
def test_anchors_and_aliases_are_refused(stack_path: Path, anchor: str, fanout: int,
                                         levels: int, nested: bool) -> None:
    lines = [f"    {anchor}0: &{anchor}0 [x]"]
    lines += [f"    {anchor}{i}: &{anchor}{i} [{', '.join([f'*{anchor}{i - 1}'] * fanout)}]"
              for i in range(1, levels + 1)]
    body = "\n".join(lines) if nested else f"    a: &{anchor} 1\n    b: *{anchor}"
    result = check(stack_path, f"config:\n  fedcloud:participants:\n{body}\n".encode(), "aliases")
    assert isinstance(result, ConfigError) and "is not accepted in a stack file" in str(result)


@settings(FUZZ, max_examples=25)
@given(keys=st.lists(st.sampled_from(DECLARED) | st.text(alphabet="abc", min_size=1,
                                                         max_size=4), min_size=1, max_size=6),
       dup=st.integers(0, 5), seed=st.integers(0, 1000))
def test_duplicate_keys_are_refused(stack_path: Path, keys: list[str], dup: int,
                                    seed: int) -> None:
    keys = [*keys, keys[dup % len(keys)]]
    random.Random(seed).shuffle(keys)
    text = "config:\n" + "".join(f"  fedcloud:{k}: 1\n" for k in keys)
    result = check(stack_path, text.encode(), "duplicates")
    assert isinstance(result, ConfigError) and "duplicate key 'fedcloud:" in str(result)
