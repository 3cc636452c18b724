#!/usr/bin/env python3
"""Compares two bindgen outputs (reference mlx-c vs ours): functions, structs, type aliases, constants.

Functions are compared by parameter types and return type (parameter names are reported separately,
they do not affect the ABI). Exit status 1 if an item present in both differs."""
import re
import sys


def norm(s):
    return " ".join(s.split()).replace(" ,", ",").replace("( ", "(").replace(" )", ")").rstrip(",")


def split_params(p):
    out, depth, cur = [], 0, ""
    for ch in p.replace("->", "\u2192"):
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return [norm(x).replace("\u2192", "->") for x in out if norm(x)]


def parse(path):
    text = open(path).read()
    text = re.sub(r"#\[doc = .*?\]\n", "", text)
    items = {"fn": {}, "struct": {}, "type": {}, "const": {}}
    for m in re.finditer(r"pub fn (\w+)\(", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params = split_params(text[m.end() : i - 1])
        params = [p if ":" in p else "_: " + p for p in params]
        names = [p.split(":", 1)[0].strip() for p in params]
        types = [norm(p.split(":", 1)[1]) for p in params]
        ret = norm(text[i : text.index(";", i)])
        items["fn"][m.group(1)] = (types, ret, names)
    for m in re.finditer(r"pub (?:struct|union) (\w+) \{(.*?)\n\}", text, re.S):
        items["struct"][m.group(1)] = norm(m.group(2))
    for m in re.finditer(r"pub struct (\w+)\((.*?)\);", text, re.S):
        items["struct"][m.group(1)] = norm(m.group(2))
    for m in re.finditer(r"pub type (\w+) = ([^;]+);", text):
        items["type"][m.group(1)] = norm(m.group(2))
    for m in re.finditer(r"pub const (\w+): ([^=]+) = ([^;]+);", text):
        items["const"][m.group(1)] = norm(m.group(2)) + " = " + norm(m.group(3))
    return items


def main():
    ref, ours = parse(sys.argv[1]), parse(sys.argv[2])
    show_missing = "--missing" in sys.argv[3:]
    bad = 0
    for kind in ("fn", "struct", "type", "const"):
        r, o = ref[kind], ours[kind]
        for name in sorted(set(r) & set(o)):
            if kind == "fn":
                (rt, rr, rn), (ot, orr, on) = r[name], o[name]
                if rt != ot or rr != orr:
                    bad += 1
                    print(f"DIFF fn {name}\n  mlx-c: ({', '.join(rt)}){rr}\n  ours:  ({', '.join(ot)}){orr}")
                elif rn != on:
                    print(f"names fn {name}: mlx-c ({', '.join(rn)}) ours ({', '.join(on)})")
            elif r[name] != o[name]:
                bad += 1
                print(f"DIFF {kind} {name}\n  mlx-c: {r[name]}\n  ours:  {o[name]}")
        missing = sorted(set(r) - set(o))
        extra = sorted(set(o) - set(r))
        if kind == "fn":
            mlx_missing = [n for n in missing if n.startswith("mlx_") or n.startswith("_mlx")]
            print(f"fn: mlx-c {len([n for n in r if n.startswith(('mlx_', '_mlx'))])}, ours "
                  f"{len([n for n in o if n.startswith(('mlx_', '_mlx'))])}, shared {len(set(r) & set(o))}, "
                  f"missing {len(mlx_missing)}, extra {len(extra)}: {' '.join(extra)}")
            if show_missing:
                for n in mlx_missing:
                    print(f"missing fn {n}")
        elif show_missing and missing:
            print(f"missing {kind}: {' '.join(missing)}")
    print(f"abi-check: {bad} differing item(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
