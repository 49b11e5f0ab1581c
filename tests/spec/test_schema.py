"""Schema errors: plain messages, exact locations, did-you-mean hints."""

from __future__ import annotations

import json

import jsonschema
import pytest

from acrnmgr.spec.validation import did_you_mean, schema

from .helpers import HEAD, devices_text, diagnostics, only, pos, spec_text


def test_schema_is_valid_draft_2020_12():
    s = schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


def test_unknown_device_type_suggests():
    text = devices_text("- type: virtio-blkk\n  path: a.img")
    d = only(diagnostics(text), "spec.devices[0].type")
    assert d.message == "unknown device type `virtio-blkk`"
    assert d.suggestion == "did you mean `virtio-blk`?"
    assert (d.line, d.col) == pos(text, "virtio-blkk")


@pytest.mark.parametrize("key,hint", [
    ("readonly", "readOnly"), ("read_only", "readOnly"), ("sector_size", "sectorSize"), ("cahce", "cache")])
def test_unknown_device_key_suggests(key, hint):
    text = devices_text(f"- type: virtio-blk\n  path: a.img\n  {key}: true")
    d = only(diagnostics(text), f"spec.devices[0].{key}")
    assert d.message == f"unknown key `{key}` for a virtio-blk device"
    assert d.suggestion == f"did you mean `{hint}`?"
    assert (d.line, d.col) == pos(text, key)  # points at the key itself


def test_unknown_key_without_close_match_lists_allowed():
    text = spec_text("settings:\n  zzz: 1")
    d = only(diagnostics(text), "spec.settings.zzz")
    assert d.suggestion.startswith("allowed keys here: `virtioPoll`, `ssram`")


def test_enum_suggestion():
    text = devices_text("- type: virtio-blk\n  path: a.img\n  cache: writeback2")
    d = only(diagnostics(text), "spec.devices[0].cache")
    assert d.message == "`writeback2` is not an allowed value"
    assert d.suggestion == "did you mean `writeback`?"
    text = spec_text("vmType: xyz")
    assert only(diagnostics(text), "spec.vmType").suggestion == "use one of `standard`, `rtvm`"


def test_wrong_type_with_yaml_quote_hint():
    text = devices_text("- type: passthru\n  bdf: 00:02.0")
    d = only(diagnostics(text), "spec.devices[0].bdf")
    assert d.message == "expected a string, got an integer"
    assert d.suggestion == 'YAML reads `00:02.0` as an integer; quote it: "00:02.0"'
    text = HEAD.replace("name: t1", "name: no")
    d = only(diagnostics(text), "metadata.name")
    assert d.message == "expected a string, got a boolean (false)"
    assert d.suggestion == 'YAML reads `no` as a boolean; quote it: "no"'


def test_missing_required_keys_point_at_the_parent():
    text = devices_text("- type: virtio-blk\n  cache: writeback")
    d = only(diagnostics(text), "spec.devices[0]")
    assert d.message == ("virtio-blk takes exactly one of `path` (an image) or `socket` (a vhost-user socket another "
                         "process serves, with backend: vhost-user)")
    assert (d.line, d.col) == pos(text, "- type", "type")
    d = only(diagnostics(devices_text("- name: x")), "spec.devices[0]")
    assert d.message == "missing required key `type`" and "`virtio-blk`" in d.suggestion


def test_top_level_problems():
    diags = diagnostics("apiVersion: acrnmgr/v2\nkind: Vm\nmetadata: {name: 'bad name!'}\nspec: {}\nextra: 1\n")
    by_path = {d.json_path: d for d in diags}
    assert by_path["apiVersion"].message == "expected `acrnmgr/v1`, got `acrnmgr/v2`"
    assert by_path["kind"].suggestion == "use `VM`"
    assert by_path["metadata.name"].message == "`bad name!` is not valid here"
    assert by_path["metadata.name"].suggestion == \
        "expected acrn-dm VM name: 1 to 15 of [A-Za-z0-9_-], not starting with '-'"
    assert by_path["extra"].message == "unknown key `extra`"
    assert {d.message for d in diags if d.json_path == "spec"} == {
        "missing required key `cpu`", "missing required key `memory`", "missing required key `boot`"}


def test_boot_exactly_one():
    text = spec_text("").replace("boot:\n    kernel:\n      path: bzImage",
                                 "boot:\n    kernel: {path: k}\n    elf: {path: e}")
    d = only(diagnostics(text), "spec.boot")
    assert d.message == "boot takes exactly one of `ovmf`, `kernel` or `elf`"
    text = spec_text("").replace("kernel:\n      path: bzImage", "ovmf: {code: c.fd, image: o.fd}")
    assert only(diagnostics(text), "spec.boot.ovmf").message == "ovmf takes either `image`, or both `code` and `vars`"


def test_sizes():
    text = spec_text("").replace("memory: 1G", "memory: 1T")
    d = only(diagnostics(text), "spec.memory")
    assert d.message == "expected a size such as `512M` or `2G`, or an integer number of MiB"
    assert (d.line, d.col) == pos(text, "1T")


def test_console_and_lpc_shapes():
    text = spec_text("""
        console:
          lpc:
            - {port: com5, backend: stdio}
            - {port: com2, backend: tty}
        devices:
          - type: virtio-console
            ports: [{kind: file, name: f}, {kind: pty, name: p, socketMode: client}]
    """)
    diags = diagnostics(text)
    assert only(diags, "spec.console.lpc[0]").message == ("com5 (S5 UART) takes `path`, `tcpPort` and `irq`, "
                                                          "no `backend`")
    assert only(diags, "spec.console.lpc[1]").message == "missing required key `path`"
    assert only(diags, "spec.devices[0].ports[0]").message == "missing required key `path`"
    assert only(diags, "spec.devices[0].ports[1]").message == "`socketMode` applies to socket ports only"


def test_every_problem_is_reported_in_order():
    text = devices_text("""
        - type: virtio-blkk
        - type: virtio-net
          tap: tap0
          macvtap: mv0
        - type: ivshmem
          region: nope
          size: 2M
    """, extra="  settings: {virtioPoll: 0}\n")
    diags = diagnostics(text)
    assert [d.json_path for d in diags] == [
        "spec.devices[0].type", "spec.devices[1]", "spec.devices[2].region", "spec.settings.virtioPoll"]
    assert diags[1].message == ("virtio-net takes exactly one of `tap`, `macvtap` or `socket` (a vhost-user socket "
                                "another process serves, with backend: vhost-user)")
    assert diags[3].message == "`0` is below the minimum 1"
    assert [d.line for d in diags] == sorted(d.line for d in diags)


def test_did_you_mean():
    assert did_you_mean("virtio_blk", ["virtio-blk", "virtio-net"]) == "did you mean `virtio-blk`?"
    assert did_you_mean("zzzz", ["virtio-blk"]) is None
    assert did_you_mean(5, ["a"]) is None


def test_examples_validate():
    from pathlib import Path

    from acrnmgr.spec.validation import validate_files

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))
    assert examples
    docs, diags = validate_files(examples)
    assert [d for d in diags if d.is_error] == []
    assert len(docs) == len(examples)
    json.dumps([d.data for d in docs])
