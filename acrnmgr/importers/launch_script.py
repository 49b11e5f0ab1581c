"""Read the acrn-dm argv out of a generated launch_user_vm_idN.sh, without running it.

ACRN's generator (launch_cfg_gen.py + launch_script_template.sh) writes
`dm_params=( ... )` where each entry is either plain words (`-m 1024M`, word-split by bash)
or a command substitution of one of the template's helper functions:

    `add_cpus 2 3`                         -> --cpu_affinity 2,3
    `add_virtual_device 3 virtio-blk X`    -> -s 3,virtio-blk,X
    `add_passthrough_device 5 0000:00:1f.6 enable_ptm` -> -s 5,passthru,0/1f/6,enable_ptm
    `add_interrupt_storm_monitor 10000 10 1 100`       -> --intr_monitor 10000,10,1,100
    `add_logger_settings console=4 kmsg=3 disk=5`      -> --logger_setting console,level=4;...
    `add_rtvm_options` (older generators)  -> --rtvm [--lapic_pt] from rtos_type

Words are tokenised with shlex (bash quoting); the helpers' output is an unquoted substitution,
so it is split on whitespace exactly as bash would. Variables the script sets at top level
(`vm_type='RTVM'`) are substituted; anything that needs the host at run time (`$(cat ...)`)
is reported and the affected option dropped."""

from __future__ import annotations

import re
import shlex

from acrnmgr.devices.virtio_input import by_name_marker
from acrnmgr.devices.virtio_net import HOST_MAC
from acrnmgr.importers.common import ImportError_, ImportResult, shown
from acrnmgr.importers.dm_argv import spec_from_argv
from acrnmgr.render.grammar import GrammarError

_ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def find_dm_params(text: str) -> tuple[str, int]:
    """The body of `dm_params=( ... )` and the line it starts on. Bash quoting and
    substitutions inside are skipped when looking for the closing parenthesis."""
    match = re.search(r"^\s*(?:declare\s+-a\s+|local\s+)?dm_params=\(", text, re.M)
    if not match:
        raise ImportError_("no `dm_params=( ... )` array in the script (is it an ACRN v3 launch script?)")
    i = match.end()
    depth, quote = 1, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote != "'":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            i += 2
            continue
        elif c in "'\"`":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[match.end():i], text.count("\n", 0, match.end()) + 1
        i += 1
    raise ImportError_("`dm_params=(` is never closed")


def top_level_variables(text: str) -> dict[str, str]:
    """Plain `name=value` assignments at the start of a line (the generator's VM descriptors)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN_RE.match(line.strip())
        if not m or m.group(1) == "dm_params" or m.group(2).startswith("("):
            continue
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError:
            continue
        if len(words) == 1 and "$" not in m.group(2) and "`" not in m.group(2):
            out[m.group(1)] = words[0]
        elif not words:
            out[m.group(1)] = ""
    return out


def _split_entries(body: str) -> list[tuple[str, str]]:
    """[(kind, text)]: kind "sub" for a `...` or $(...) substitution, "words" for the rest."""
    out: list[tuple[str, str]] = []
    i, start = 0, 0
    quote = None
    while i < len(body):
        c = body[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if c in "'\"":
            quote = c
        elif c == "`" or body.startswith("$(", i):
            if body[start:i].strip():
                out.append(("words", body[start:i]))
            if c == "`":
                end = body.find("`", i + 1)
                inner, nxt = body[i + 1:end], end + 1
            else:
                depth, j = 1, i + 2
                while j < len(body) and depth:
                    depth += {"(": 1, ")": -1}.get(body[j], 0)
                    j += 1
                inner, nxt = body[i + 2:j - 1], j
            if nxt <= i:
                raise ImportError_("unterminated command substitution in dm_params")
            out.append(("sub", inner))
            i = start = nxt
            continue
        elif c == "#" and (i == 0 or body[i - 1] in " \t\n"):
            if body[start:i].strip():
                out.append(("words", body[start:i]))
            i = body.find("\n", i)
            if i < 0:
                return out
            start = i
            continue
        i += 1
    if body[start:].strip():
        out.append(("words", body[start:]))
    return out


# launch_cfg_gen.py's `dir_<dev>=`mount_partition <partition>`` for a `<block>partition:image</block>`
_MOUNT_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(?:`|\$\()mount_partition\s+(\S+?)(?:`|\))\s*$", re.M)
_HOST_MAC_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=\$\(cat /sys/class/net/e\*/address\)\s*$", re.M)


class _Expander:
    def __init__(self, variables: dict[str, str], warnings: list[str], host_mac_var: str | None = None,
                 mounts: dict[str, str] | None = None):
        self.variables = variables
        self.warnings = warnings
        self.host_mac_var = host_mac_var  # the variable the script reads the host NIC's MAC into
        self.mounts = mounts or {}  # variable -> the partition the script mounts into it (mount_partition)

    def expand(self, word: str) -> str | None:
        """Substitute known variables; None when the word depends on something only the host
        knows when the script runs."""
        unknown = []

        def sub(m: re.Match) -> str:
            name = m.group(1) or m.group(3)
            if name in self.variables and not m.group(2):
                return self.variables[name]
            unknown.append(m.group(0))
            return m.group(0)

        out = _VAR_RE.sub(sub, word)
        mounted = [m for m in _VAR_RE.finditer(word) if (m.group(1) or m.group(3)) in self.mounts]
        if mounted:
            partition = self.mounts[mounted[0].group(1) or mounted[0].group(3)]
            self.warnings.append(f"{shown(word)!r}: the launch script mounts {partition} when it runs "
                                 "(mount_partition) and "
                                 f"uses {word[mounted[0].end():].lstrip('/')} inside it; not imported (give the "
                                 "image's path on the Service VM)")
            return None
        if unknown:
            self.warnings.append(f"{shown(word)!r} depends on {shown(', '.join(unknown))}, known only when the "
                                 "script runs; dropped")
            return None
        return out

    def words(self, text: str, expand: bool = True) -> list[str]:
        try:
            words = shlex.split(text, comments=True)
        except ValueError as exc:
            raise ImportError_(f"cannot tokenise dm_params: {exc}") from None
        if not expand:
            return words
        return [w for w in (self.expand(w) for w in words) if w is not None]

    def helper(self, command: str) -> list[str]:
        """The words a helper call's output becomes after bash word-splits it."""
        raw = self.words(command, expand=False)
        if len(raw) >= 4 and raw[0] == "add_virtual_device" and raw[2] == "virtio-net":
            raw[3] = self._net_options(raw[3])
        expanded = [self.expand(w) for w in raw]
        if None in expanded and raw[0] in ("add_virtual_device", "add_passthrough_device"):
            return []  # a device whose options are known only at run time is left out whole, not in part
        args = [w for w in expanded if w]
        if not args:
            return []
        fn, args = args[0], args[1:]
        if fn == "add_cpus":
            return ["--cpu_affinity", ",".join(args)] if args else []
        if fn == "add_virtual_device":
            if len(args) < 2:
                self.warnings.append(f"`{shown(command)}`: add_virtual_device needs a slot and a kind; dropped")
                return []
            slot, kind, options = args[0], args[1], " ".join(args[2:])
            if kind == "virtio-input":
                options = self._input_options(options)
            return ("-s " + f"{slot},{kind}" + (f",{options}" if options else "")).split()
        if fn == "add_passthrough_device":
            if len(args) < 2:
                self.warnings.append(f"`{shown(command)}`: add_passthrough_device needs a slot and a BDF; dropped")
                return []
            m = re.fullmatch(r"(?:[0-9a-fA-F]{4}:)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])", args[1])
            if not m:
                self.warnings.append(f"`{shown(command)}`: BDF {args[1]!r} is not [dddd:]bb:dd.f; dropped")
                return []
            bus, dev, fn_ = (int(g, 16) for g in m.groups())
            options = " ".join(args[2:])
            return ("-s " + f"{args[0]},passthru,{bus:x}/{dev:x}/{fn_:x}" + (f",{options}" if options else "")).split()
        if fn == "add_interrupt_storm_monitor":
            return ["--intr_monitor", ",".join(args)]
        if fn == "add_logger_settings":
            items = [f"{a.rsplit('=', 1)[0]},level={a.rsplit('=', 1)[-1]}" for a in args]
            return ["--logger_setting", ";".join(items)]
        if fn == "add_rtvm_options":
            rtos = self.variables.get("rtos_type", "no")
            return {"Soft RT": ["--rtvm"], "Hard RT": ["--rtvm", "--lapic_pt"]}.get(rtos, [])
        self.warnings.append(f"`{shown(command)}`: unknown helper {shown(fn)!r} (not one of ACRN's launch script "
                             "template); its output is unknown, dropped")
        return []

    def _input_options(self, options: str) -> str:
        """As the template's add_virtual_device: `,id:<id>` is taken out and the id passed as the serial
        (virtio_input.c takes everything after the comma); `Device name: N, Device physical path: P`
        is resolved to /dev/input/eventX on the Service VM when the script runs."""
        ident = re.search(r"id:([a-zA-Z0-9_\-]*)", options)
        if ident:
            options = options.replace(f",id:{ident.group(1)}", "")
        named = re.search(r"(Device name: )(.*),( Device physical path: )(.*)", options)
        if named:  # resolved at launch (spec deviceName/devicePhys)
            options = by_name_marker(named.group(2).strip(), named.group(4).strip())
        if ident and ident.group(1):
            options += f",{ident.group(1)}"
        return options

    def _net_options(self, options: str) -> str:
        """The generator appends mac_seed=${mac:0:17}-<vm>, where $mac is the host NIC's address read
        when the script runs (`mac=$(cat /sys/class/net/e*/address)`): kept as the spec's HOST_MAC
        placeholder, which the launch script and `up` resolve the same way."""
        head, sep, seed = options.partition("mac_seed=")
        if not sep or "$" not in seed:
            return options
        if self.host_mac_var:
            seed = re.sub(r"\$\{" + self.host_mac_var + r":0:17\}", HOST_MAC, seed)
        if "$" in seed:
            self.warnings.append(f"virtio-net mac_seed={seed}: the MAC seed depends on {seed!r}, known only when "
                                 "the script runs; not imported (set `mac` or `macSeed` on the device)")
            return head.rstrip(",")
        return head + sep + seed


def argv_from_launch_script(text: str) -> tuple[list[str], list[str]]:
    """(acrn-dm argv starting with "acrn-dm", warnings)."""
    warnings: list[str] = []
    body, _line = find_dm_params(text)
    variables = top_level_variables(text)
    host_mac = _HOST_MAC_RE.search(text)
    mounts = {m.group(1): m.group(2) for m in _MOUNT_RE.finditer(text)}
    expander = _Expander(variables, warnings, host_mac.group(1) if host_mac else None, mounts)
    # Any other `$(cat ...)`-style variable assigned at top level is unknown: leave it out.
    argv = ["acrn-dm"]
    for kind, chunk in _split_entries(body):
        if kind == "sub":
            argv += expander.helper(chunk)
        else:
            words = expander.words(chunk)
            for word in words:
                if word.startswith("-") and len(word.split()) > 1:
                    warnings.append(
                        f"dm_params word {word!r} reaches acrn-dm as ONE argument (ACRN's generator quotes "
                        "customized_parameters into one word): acrn-dm reads it as "
                        f"{word[:2]!r} with the value {word[2:]!r}, and so does this import. Unquote it in the "
                        "script, or import the scenario, whose customized_parameters are split into words")
            argv += words
    if not re.search(r"acrn-dm\s+(\"\$\{dm_params\[@\]\}\"|\$\{dm_params\[@\]\}|\"\$\{dm_params\[\*\]\}\")", text):
        warnings.append("the script never runs `acrn-dm \"${dm_params[@]}\"`; imported dm_params anyway")
    return argv, warnings


def import_launch_script(text: str, source: str, version: str = "3.x") -> ImportResult:
    argv, warnings = argv_from_launch_script(text)
    variables = top_level_variables(text)
    try:
        imported = spec_from_argv(argv, version)
    except GrammarError as exc:
        raise ImportError_(f"{source}: acrn-dm would refuse this argv: {exc}") from None
    if variables.get("own_pcpu") == "y" or variables.get("scheduler") == "SCHED_NOOP":
        imported.data["spec"]["cpu"]["ownPcpu"] = True  # the template's add_cpus offlines its CPUs
    if variables.get("vm_type") == "RTVM" and imported.data["spec"].get("vmType") != "rtvm":
        imported.warnings.append("vm_type='RTVM' but dm_params has no --rtvm; imported as a standard VM")
    for dev in imported.data["spec"].get("devices", []):
        path = dev.get("path") if dev["type"] == "virtio-blk" else None
        if path and not path.startswith("/"):
            warnings.append(f"virtio-blk {path}: the script gives acrn-dm this relative path, which it opens from "
                            "the directory the script runs in; the spec keeps it relative, and acrnmgr resolves "
                            "it against the spec file's folder: keep the spec next to the image, or import "
                            "with --base-dir DIR (where the script runs)")
    imported.warnings[:0] = warnings
    return ImportResult(source, "launch-script", [imported])
