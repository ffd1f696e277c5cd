"""`imgcls embed|gallery|recognize|search|cluster`: recognition and search by embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgcls.cli.output import positive_int
from imgcls.cli.output import print_text as _print


def _share(text: str) -> float:
    value = float(text)  # argparse turns the ValueError into "invalid _share value"
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 (excluded) and 1")
    return value


def cmd_embed(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import embed_arguments
    from imgcls.retrieval.embed import Embedder, save_embeddings

    embedder = Embedder.from_checkpoint(args.checkpoint)
    result = embed_arguments(embedder, args.paths)
    out = save_embeddings(Path(args.out), result, embedder)
    _print(f"{len(result.paths)} embedding(s) of dimension {result.embeddings.shape[1]}: {out} (paths in .json)")
    return 1 if result.errors else 0


def cmd_gallery_build(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import describe_gallery
    from imgcls.retrieval.embed import Embedder
    from imgcls.retrieval.gallery import build_gallery

    gallery = build_gallery(
        Embedder.from_checkpoint(args.checkpoint),
        Path(args.data),
        dtype=args.dtype,
        index=args.index,
        recognition=args.recognition,
    )
    gallery.save(Path(args.out), replace=True)  # a rebuild replaces whatever gallery was there
    _print(describe_gallery(gallery.info(), args.out))
    return 0


def cmd_gallery_add(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import enrol

    added, errors = enrol(args.gallery, args.label, args.images, checkpoint=args.checkpoint)
    _print(f"enrolled {added} image(s) as {args.label!r} in {args.gallery}")
    return 1 if errors else 0


def cmd_gallery_remove(args: argparse.Namespace) -> int:
    from imgcls.retrieval.gallery import update_gallery

    gallery, removed = update_gallery(Path(args.gallery), lambda g: g.remove(args.label))
    _print(f"removed {removed} image(s) of {args.label!r}; {len(gallery)} left (calibrate again for a threshold)")
    return 0


def cmd_gallery_info(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import describe_gallery
    from imgcls.retrieval.gallery import Gallery

    info = Gallery.load(Path(args.gallery)).info()
    _print(json.dumps(info, ensure_ascii=False) if args.json else describe_gallery(info, args.gallery))
    return 0


def cmd_gallery_calibrate(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import calibrate_gallery, describe_calibration

    stats = calibrate_gallery(args.gallery, args.data, checkpoint=args.checkpoint, keep_known=args.keep_known)
    _print(json.dumps(stats, ensure_ascii=False) if args.json else describe_calibration(stats))
    return 0


def cmd_recognize(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import recognize_arguments

    found = recognize_arguments(args.gallery, args.images, topk=args.topk, checkpoint=args.checkpoint)
    for item in found:
        _print(json.dumps(item.to_json(), ensure_ascii=False) if args.json else item.to_text())
    return 1 if any(item.error for item in found) else 0


def cmd_search(args: argparse.Namespace) -> int:
    from imgcls.retrieval.commands import search_arguments

    found = search_arguments(args.gallery, args.images, k=args.k, index=args.index, checkpoint=args.checkpoint)
    for item in found:
        _print(json.dumps(item.to_json(), ensure_ascii=False) if args.json else item.to_text())
    return 1 if any(item.error for item in found) else 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from imgcls.retrieval.cluster import describe_clustering
    from imgcls.retrieval.commands import cluster_arguments
    from imgcls.retrieval.embed import Embedder

    clustering = cluster_arguments(
        Embedder.from_checkpoint(args.checkpoint),
        args.paths,
        Path(args.out),
        k=args.k,
        min_cluster_size=args.min_cluster_size,
        seed=args.seed,
    )
    _print(describe_clustering(clustering, Path(args.out)))
    return 0


def add_retrieval_parsers(sub, common: argparse.ArgumentParser) -> None:
    """embed, gallery, recognize, search, cluster: recognition and search by embeddings."""
    kinds = ["auto", "exact", "flat", "ivf", "hnsw"]
    index_help = "exact (numpy) or a FAISS index; auto: exact below 100k images, else ivf"
    checkpoint_help = "the gallery's checkpoint, when it has moved (must hold the same weights)"
    p = sub.add_parser("embed", parents=[common], help="L2-normalised embeddings of images (.npy + .json paths)")
    p.add_argument("checkpoint")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or globs")
    p.add_argument("--out", required=True, help="the .npy file; its paths go to the .json beside it")
    p.set_defaults(func=cmd_embed)

    gallery = sub.add_parser("gallery", help="enrolled images to recognise and search").add_subparsers(
        dest="gallery_command", required=True, metavar="ACTION"
    )
    p = gallery.add_parser("build", parents=[common], help="enrol class folders (folder name = label)")
    p.add_argument("checkpoint")
    p.add_argument("data", help="class folders, or a root whose train/ is enrolled")
    p.add_argument("--out", required=True, help="the gallery folder")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored embeddings")
    p.add_argument("--index", choices=kinds, default="auto", help=index_help)
    p.add_argument(
        "--recognition",
        choices=["prototype", "nearest"],
        default="prototype",
        help="score a label by its mean embedding (default) or by its nearest image",
    )
    p.set_defaults(func=cmd_gallery_build)
    p = gallery.add_parser("add", parents=[common], help="enrol images under a label, without retraining")
    p.add_argument("gallery")
    p.add_argument("--label", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images, folders or globs")
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.set_defaults(func=cmd_gallery_add)
    p = gallery.add_parser("remove", parents=[common], help="forget every image of a label")
    p.add_argument("gallery")
    p.add_argument("--label", required=True)
    p.set_defaults(func=cmd_gallery_remove)
    p = gallery.add_parser("info", parents=[common], help="labels, counts, model and threshold of a gallery")
    p.add_argument("gallery")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery_info)
    p = gallery.add_parser("calibrate", parents=[common], help="choose the unknown threshold on held-out images")
    p.add_argument("gallery")
    p.add_argument("data", help="held-out class folders (labels not enrolled count as unknown), or a root's val/")
    p.add_argument(
        "--keep-known",
        type=_share,
        default=0.95,
        help="share of known images kept accepted; the threshold then rejects as many unknowns as it can (0.95)",
    )
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery_calibrate)

    p = sub.add_parser("recognize", parents=[common], help="best enrolled label of images, or unknown")
    p.add_argument("gallery")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images, folders or globs")
    p.add_argument("--topk", type=positive_int, default=3, help="labels listed per image (3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.set_defaults(func=cmd_recognize)
    p = sub.add_parser("search", parents=[common], help="the most similar enrolled images")
    p.add_argument("gallery")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images, folders or globs")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per image (10)")
    p.add_argument("--index", choices=kinds, help=f"for this search: {index_help}")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--checkpoint", help=checkpoint_help)
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("cluster", parents=[common], help="group unlabeled images; CSV and contact sheets")
    p.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or globs")
    p.add_argument("--checkpoint", required=True, help="the model whose embeddings are clustered")
    p.add_argument("--k", type=positive_int, help="number of clusters (k-means); without it HDBSCAN finds them")
    p.add_argument("--min-cluster-size", type=int, default=5, help="HDBSCAN's smallest cluster (5)")
    p.add_argument("--out", default="clusters", help="folder for clusters.csv and cluster-*.png (clusters)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cluster)
