"""Render the launch script (templates/launch_user_vm.sh.j2) for a compiled VM.

Its shape follows ACRN's generated launch_user_vm_idN.sh: helper functions, tap creation,
passthrough unbinding and CPU offlining with the semantics of ACRN's launch script template, then
`dm_params=( ... )` and `acrn-dm "${dm_params[@]}"`. Every value goes through shlex.quote; the
one expansion is the HOST_MAC placeholder of a macSeed, which becomes "${mac:0:17}"."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote

from acrnmgr.devices.virtio_input import BY_NAME_RE
from acrnmgr.devices.virtio_net import HOST_MAC
from acrnmgr.render.acrndm import Compiled
from acrnmgr.render.grammar import OPTIONS_V2, OPTIONS_V3
from acrnmgr.resources import template_loader

TEMPLATE = "launch_user_vm.sh.j2"


@cache
def _template():
    import jinja2


    env = jinja2.Environment(
        loader=template_loader(),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env.get_template(TEMPLATE)


def shell_word(word: str) -> str:
    """`word` quoted for bash, except HOST_MAC, which becomes the script's "${mac:0:17}" (the Service
    VM's NIC address, read when the script runs, as ACRN's generated scripts do)."""
    if HOST_MAC not in word:
        return shlex.quote(word)
    return '"${mac:0:17}"'.join(shlex.quote(part) if part else "" for part in word.split(HOST_MAC))


@cache
def _options_with_argument() -> frozenset[str]:
    long = {f"--{o.long}" for t in (OPTIONS_V3, OPTIONS_V2) for o in t.values() if o.has_arg}
    short = {f"-{o.short}" for t in (OPTIONS_V3, OPTIONS_V2) for o in t.values() if o.has_arg and o.short}
    return frozenset(long | short)


@dataclass(frozen=True)
class ByNameInput:
    """A virtio-input found by evdev name and physical path when the script runs: `var` holds its -s
    config, or is empty (and the device left out, as ACRN's template does) when no evdev matches."""

    var: str
    name: str
    phys: str
    before: str  # shell-quoted text of the -s config before the evdev node
    after: str


def dm_lines(argv: list[str], inputs: list[ByNameInput] | None = None) -> list[str]:
    """dm_params one option per line: `-s 3:0,virtio-blk,...` stays together (quoted apart). A virtio-input
    by name becomes `${input_N:+-s} ${input_N:+"$input_N"}`, recorded in `inputs`."""
    takes_arg = _options_with_argument()
    lines, i = [], 0
    while i < len(argv):
        named = BY_NAME_RE.search(argv[i + 1]) if i + 1 < len(argv) and argv[i] in ("-s", "--pci_slot") else None
        if named and inputs is not None:
            var = f"input_{len(inputs) + 1}"
            word = argv[i + 1]
            inputs.append(ByNameInput(var, unquote(named.group(1)), unquote(named.group(2)),
                                      shell_word(word[:named.start()]), shell_word(word[named.end():])))
            lines.append(f'${{{var}:+{shell_word(argv[i])}}} ${{{var}:+"${var}"}}')
            i += 2
        elif argv[i] in takes_arg and i + 1 < len(argv):
            lines.append(f"{shell_word(argv[i])} {shell_word(argv[i + 1])}")
            i += 2
        else:
            lines.append(shell_word(argv[i]))
            i += 1
    return lines


def render_script(compiled: Compiled) -> str:
    if compiled.engine != "acrn" or not compiled.argv:
        raise ValueError("a launch script needs an acrn-engine compile with an argv")
    inputs: list[ByNameInput] = []
    lines = dm_lines(compiled.argv[1:], inputs)
    return _template().render(
        name=compiled.name,
        target_version=compiled.target_version,
        spec_hash=compiled.spec_hash,
        dm_lines=lines,
        inputs=inputs,
        taps=compiled.taps,
        bridge=compiled.bridge,
        passthru=compiled.passthru,
        cpus=compiled.cpus,
        host_mac=any(HOST_MAC in a for a in compiled.argv),
    )
