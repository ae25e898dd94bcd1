"""``--backend auto`` on the CPU at float32: the exact path that finishes this run first, from
the probe cached for this CPU and model (:mod:`fpncli.inference.probe`), or measured now when
there is none and the run is long enough to repay a probe, else the static default."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from fpncli.inference.backend_build import (
    GRAPH,
    PathChoice,
    build,
    graph_key,
    graph_metadata,
    graph_refusal,
    installed,
    static_default,
)
from fpncli.inference.settings import InferenceArgs

# Below this many images a probe (two passes of one replica per core, ~10-20 s per candidate
# at 800 px) would cost more than it saves.
PROBE_MIN_IMAGES = 24


def resolve_auto(
    model: Any,
    args: InferenceArgs,
    images: int,
    candidates: Sequence[str],
    source: str,
    on_note: Callable[[str], None] | None,
) -> PathChoice:
    from fpncli.inference import probe

    if args.slice_size is not None or args.tta is not None:
        candidates = [c for c in candidates if c in ("torch", "winograd")]  # they wrap the PyTorch model
    usable = [c for c in candidates if installed(c)]
    no_graph = graph_refusal(model) is not None  # e.g. deformable convolutions: no ONNX op
    if no_graph:
        usable = [c for c in usable if c not in GRAPH]
    # The winner depends on the CPU and libraries, and on the network and input size too.
    cfg = model.config
    key = f"{probe.machine_key()} | {cfg.backbone} {cfg.neck} {cfg.min_size}px"
    if no_graph:
        key += " | no ONNX graph"  # fewer candidates, other timings: its own entry
    entry = None if args.reprobe else probe.cached(key)
    cores = probe.cpu_info()["cores"]
    if entry is not None and usable and set(entry.get("seconds", {})) >= set(usable):
        seconds = {k: float(v) for k, v in entry["seconds"].items() if k in usable}
        builds = _set_up_now(model, source, {k: float(v) for k, v in entry.get("builds", {}).items()}, usable)
        winner = probe.fastest(seconds, builds, images, cores)
        why = (
            "fastest"
            if winner == min(seconds, key=lambda k: seconds[k])
            else "fastest overall counting its set-up"
        )
        where = probe.cache_dir() / probe.CACHE_FILE
        return PathChoice(winner, "fp32", f"cached probe: {why} for {images} image(s); {where}")
    if images < PROBE_MIN_IMAGES and not args.reprobe:
        default = static_default()
        return PathChoice(default, "fp32", f"default; {images} image(s) are too few to probe (--reprobe)")
    if on_note is not None:
        on_note(f"probing {', '.join(usable)} on this CPU (once; cached)")
    height = int(model.config.min_size)
    width = min(int(model.config.max_size), round(height * 4 / 3))

    reused: dict[str, float] = {}

    def builder(name: str) -> Callable[[int], list[Callable[[Any], Any]]]:
        def make(replicas: int) -> list[Callable[[Any], Any]]:
            graph = name in GRAPH
            # Graph paths: one session shared by the replicas' threads, as fpn detect runs
            # them; PyTorch paths: one model copy per replica, as its worker processes have.
            models = [build(copy.deepcopy(model), name, "fp32", "cpu", source=source)]
            reused[name] = float(getattr(models[0], "graph_saved_seconds", 0.0))
            if graph:
                models[0].share_between_threads()
                models *= replicas
            else:
                models += [copy.deepcopy(models[0]) for _ in range(replicas - 1)]

            def runner(m: Any) -> Callable[[Any], Any]:
                def run(image: Any) -> Any:
                    size = (int(image.shape[1]), int(image.shape[2]))
                    return m.detect_prepared([m.prepare_image(image.clone())], [size])

                return run

            return [runner(m) for m in models]

        return make

    seconds, builds = probe.probe({name: builder(name) for name in usable}, height, width, replicas=cores)
    # The cache stores what a new model's set-up costs: a graph read from the graph cache
    # counts what making it cost.
    builds = {k: round(v + reused.get(k, 0.0), 3) for k, v in builds.items()}
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    best = min(seconds, key=lambda k: seconds[k])
    probe.remember(
        key, {"winner": best, "seconds": seconds, "builds": builds, "size": [height, width], "when": when}
    )
    # The probe stored this model's graphs: this run reads them instead of exporting.
    now = _set_up_now(model, source, builds, usable)
    winner = probe.fastest(seconds, now, images, cores)
    timings = ", ".join(
        f"{k} {v:.2f} (+{now[k]:.0f} s set-up)" for k, v in sorted(seconds.items(), key=lambda kv: kv[1])
    )
    return PathChoice(winner, "fp32", f"probed now, fastest for {images} image(s): s/image {timings}")


def _set_up_now(model: Any, source: str, builds: dict[str, float], usable: Sequence[str]) -> dict[str, float]:
    """``builds`` (each path's set-up for a model seen for the first time) less the export
    that the graph cache saves this ``model``'s ``usable`` graph paths."""
    from fpncli.inference import graph_cache

    graphs = [k for k in builds if k in GRAPH and k in usable]
    if not graphs or graph_cache.limit_bytes() == 0:
        return dict(builds)
    meta = graph_metadata(model, source)
    state = graph_cache.state_digest(model)
    now = dict(builds)
    for name in graphs:
        # As build makes them: ONNX Runtime's fp32 graph has Winograd convolutions.
        saved = graph_cache.made_seconds(graph_key(state, meta, name == "onnxruntime", "fp32"))
        now[name] = round(max(0.0, builds[name] - saved), 3)
    return now
