"""Metadata values of a GGUF file, read from its header alone.

gguf.GGUFReader indexes every key-value pair and tensor before answering (~2.5 s for SmolLM2's
49k-token vocabulary on a 2-core CPU); here the header's pairs are stepped over without decoding
what was not asked for: ~1 ms for one key. Used where a command needs a few keys of a big file
(the default model's pre-tokenizer, a model card's licence, an Ollama Modelfile's template)."""

from __future__ import annotations

import os

# GGUF value types (the GGUF spec): struct formats of the scalars; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def field(path: str | os.PathLike, key: str):
    """One metadata value (a str, number, bool or list), None when the file has no such key;
    ValueError when it is not a GGUF file."""
    return fields(path, [key])[key]


def fields(path: str | os.PathLike, keys: list[str]) -> dict:
    """Several keys in one pass over the header: {key: value, or None when absent}."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] < 2:  # version 1 counted in u32
            raise ValueError(f"{path} is not a GGUF file (version 2 or later)")

        def string(at):
            (n,) = struct.unpack_from("<Q", buf, at)
            return bytes(buf[at + 8:at + 8 + n]).decode("utf-8", "replace"), at + 8 + n

        def value(kind, at, want):  # (the value if wanted else None, the offset after it)
            if kind == 8:
                return string(at) if want else (None, at + 8 + struct.unpack_from("<Q", buf, at)[0])
            if kind == 9:
                item, n = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item in _GGUF_SCALARS and not want:
                    return None, at + n * struct.calcsize(_GGUF_SCALARS[item])
                items = []
                for _ in range(n):
                    v, at = value(item, at, want)
                    items.append(v)
                return (items if want else None), at
            fmt = _GGUF_SCALARS[kind]
            return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)

        found = dict.fromkeys(keys)
        wanted = set(keys)
        (n_kv,) = struct.unpack_from("<Q", buf, 16)  # after magic, version (u32), tensor count (u64)
        at = 24
        for _ in range(n_kv):
            if not wanted:
                break
            name, at = string(at)
            (kind,) = struct.unpack_from("<I", buf, at)
            v, at = value(kind, at + 4, name in wanted)
            if name in wanted:
                found[name] = v
                wanted.discard(name)
    return found
