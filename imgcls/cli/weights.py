"""`imgcls weights get|list`: fetch pretrained weights ahead (for machines that will be offline)
and show what the Hugging Face cache holds."""

from __future__ import annotations

import argparse

from imgcls.cli.output import print_text as _print


def cmd_weights_get(args: argparse.Namespace) -> int:
    from imgcls.models.pretrained import fetch, hub_cache, sha256_file, weights_name

    for spec in args.names:
        if spec.startswith("clip:"):
            from imgcls.models.clip_backbone import fetch_clip

            name, file = spec, fetch_clip(spec)
        else:
            name = weights_name(spec, args.model)
            file = fetch(name)
        _print(f"{name}: {file} (sha256 {sha256_file(file)[:16]}…)")
    _print(f"cache: {hub_cache()} — copy it to an offline machine, or point HF_HUB_CACHE at it")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from imgcls.models.pretrained import cached_weights, hub_cache

    cached = cached_weights()
    if args.pattern:  # the tags timm knows, each marked when it is already here
        import timm

        here = {repo.removeprefix("timm/") for repo, _, _ in cached}
        names = timm.list_pretrained(args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*")
        for name in names:
            _print(f"{name:48s} {'cached' if name in here else ''}")
        if not names:
            _print(f"timm knows no pretrained weights matching {args.pattern!r}.")
        return 0
    if not cached:
        _print(f"no weights in the Hugging Face cache ({hub_cache()}); `imgcls weights get NAME` fetches some.")
        return 0
    for repo, size, _ in cached:
        _print(f"{repo:56s} {size / 1e6:8.1f} MB")
    _print(f"cache: {hub_cache()}")
    return 0


def add_weights_parsers(sub, common: argparse.ArgumentParser) -> None:
    weights = sub.add_parser("weights", parents=[common], help="fetch pretrained weights ahead; list the cache")
    group = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    p = group.add_parser("get", parents=[common], help="fetch weights into the Hugging Face cache (with network)")
    p.add_argument("names", nargs="+", metavar="NAME", help="timm pretrained tags (resnet18.a1_in1k) or clip:MODEL/TAG")
    p.add_argument("--model", help="with NAME imagenet: the model whose default weights to fetch")
    p.set_defaults(func=cmd_weights_get)
    p = group.add_parser("list", parents=[common], help="weights in the cache; with PATTERN, timm's tags")
    p.add_argument("pattern", nargs="?", help="e.g. 'resnet*': the pretrained tags timm knows, marked when cached")
    p.set_defaults(func=cmd_weights_list)
