"""`promptswitch embed`, `search` and `serve`, and the embedding job's MLflow run."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml

from library.embed import EmbedConfig
from model.config import ConfigError

EXPERIMENT = "promptswitch-library"


def embed_config(overrides: list[str], **given) -> EmbedConfig:
    """The job's options from `key=value` words (and the flags in `given`), every value checked."""
    fields = {f.name for f in dataclasses.fields(EmbedConfig)}
    values = {k: v for k, v in given.items() if v is not None}
    for word in overrides:
        key, sep, raw = word.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"unknown option {word!r}; allowed: {', '.join(sorted(fields))} as key=value")
        values[key] = yaml.safe_load(raw)
    return EmbedConfig(**values)


def run_embed(args) -> int:
    from library.embed import embed_library
    from library.source import resolve
    from orchestrator import console
    from orchestrator.tracking.tracker import Tracker, resolve_tracking_uri

    config = embed_config(
        args.overrides, split=args.split, segment_seconds=args.segment_seconds, stride_seconds=args.stride
    )  # checked before Ray starts
    model = resolve(args.model, download_dir=args.out.parent / f".{args.out.name}-model")
    with console.ray_session(args.address, args.out / "logs", args.verbose, dashboard=args.dashboard):
        uri = resolve_tracking_uri(None, Path.cwd())
        tracker = Tracker.start(
            uri,
            EXPERIMENT,
            args.out.name,
            params={"model": args.model, "videos": str(args.videos), "out": str(args.out.absolute())}
            | dataclasses.asdict(config),
            tags={"promptswitch.model_digest": model.digest, "promptswitch.model_source": args.model},
        )
        try:
            manifest = embed_library(model, args.videos, args.out, config, rebuild=args.rebuild)
        except BaseException:
            tracker.finish("FAILED")
            raise
        counts, job = manifest["counts"], manifest["last_job"]
        tracker.log_metrics(
            counts | {k: job[k] for k in ("videos_per_second", "model_busy_fraction", "seconds")}, step=0
        )
        tracker.log_dict_artifact(job["bad"], "bad_videos.json")
        tracker.log_dict_artifact(manifest, "library_manifest.json")
        tracker.finish("FINISHED")
    print(
        f"library {args.out}: {counts['videos']} videos, {counts['rows']} rows, {counts['bad_videos']} bad; "
        f"this run embedded {counts['embedded_now']} videos at {job['videos_per_second']:.1f} videos/s "
        f"(MLflow run {tracker.run_id})",
        flush=True,
    )
    for b in job["bad"]:
        print(f"  skipped {b['video']}: {b['error']}", file=sys.stderr)
    return 0


def run_search(args) -> int:
    from library.search import Library

    library = Library.open(args.library)
    if args.like:
        hits = library.search_video(args.like, args.k)[0]
    elif args.query:
        hits = library.search(args.query, args.k)[0]
    else:
        raise ConfigError("give a query text, or --like VIDEO")
    if args.json:
        for h in hits:
            print(json.dumps(vars(h)))
        return 0
    print(f"{'rank':>4}  {'score':>6}  {'time (s)':>13}  {'video id':<24}  path")
    for h in hits:
        span = f"{h.start_s:.1f}-{h.end_s:.1f}"
        print(f"{h.rank:>4}  {h.score:6.3f}  {span:>13}  {h.video_id:<24}  {h.video_path}")
    return 0


def run_serve(args) -> int:
    from library.serve import serve_library

    return serve_library(
        args.library, host=args.host, port=args.port, replicas=args.replicas, address=args.address
    )
