"""Recommender cost: training epochs and full-ranking evaluation, ours beside RecBole's."""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable
from pathlib import Path

from .core import (
    CPU_ROUNDS,
    Measurement,
    Options,
    _ms,
    _timing_row,
    beauty_folder,
    interleaved,
)


def seconds_of(target: str, repeat_arg: str, **kwargs) -> Callable[[Options], Measurement]:
    """A benchmark from a timing function `module:function(dataset_folder, threads=, <repeat_arg>=,
    **kwargs)` that returns mean seconds (the recommenders' time_epoch and time_full_eval)."""
    module, _, name = target.partition(":")

    def benchmark(options: Options) -> Measurement:
        from ..data import prepare_dataset

        options = options.defaults(**CPU_ROUNDS)
        function = getattr(importlib.import_module(module), name)
        folder = prepare_dataset(options.dataset)  # its usual place under outputs/, reused when current
        seconds = function(folder, threads=options.threads, **{repeat_arg: options.repeats}, **kwargs)
        values = {"dataset": options.dataset, **kwargs, "repeats": options.repeats, "seconds": round(seconds, 4)}
        notes = [
            f"{name} on {options.dataset}, mean over {options.repeats} {repeat_arg}, torch threads {options.threads}"
        ]
        return Measurement([values], values, f"{seconds:.3f} s ({name} on {options.dataset})", notes)

    benchmark.__doc__ = f"Seconds of {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) on --dataset."
    return benchmark


def recbole_vs_ours(options: Options) -> Measurement:
    """Our SASRec against RecBole's on the same data and protocol, in one run: seconds per training
    epoch and per full-ranking pass over all users (RecBole in its own virtualenv, see recsys.peers)."""
    from ..data import prepare_dataset
    from ..recsys.experiment import time_epoch, time_full_eval
    from ..recsys.peers import RECBOLE_PYTHON, recbole_sasrec_timing

    if not Path(RECBOLE_PYTHON).exists():
        note = f"RecBole not installed at {RECBOLE_PYTHON} (see sda_lib/recsys/peers.py): nothing measured"
        return Measurement([], {"skipped": note}, "skipped: RecBole absent", [note])
    options = options.defaults(**CPU_ROUNDS)
    folder = prepare_dataset(options.dataset)
    ours = {
        "epoch": time_epoch(folder, threads=options.threads, epochs=options.repeats),
        "eval": time_full_eval(folder, threads=options.threads, repeats=options.repeats),
    }
    peer = recbole_sasrec_timing(folder, epochs=1, threads=options.threads)
    theirs = {"epoch": peer["epoch_seconds"], "eval": peer["eval_seconds"]}
    rows = [
        {
            "what": what,
            "ours_s": round(ours[what], 3),
            "recbole_s": round(theirs[what], 3),
            "recbole/ours": round(theirs[what] / ours[what], 2),
        }
        for what in ("epoch", "eval")
    ]
    notes = [
        f"SASRec hidden 64, 2 layers, 2 heads, max length 50, on {options.dataset}; torch threads "
        f"{options.threads}. An epoch is each library's own: ours one pass per user predicting every "
        f"next item ({peer['users']} users), RecBole's every prefix ({peer['train_sequences']} sequences)."
    ]
    values = {
        "dataset": options.dataset,
        **{f"{r['what']}_ratio": r["recbole/ours"] for r in rows},
        "ours": ours,
        "recbole": theirs,
    }
    return Measurement(
        rows, values, f"RecBole/ours: epoch {rows[0]['recbole/ours']}x, full ranking {rows[1]['recbole/ours']}x", notes
    )


FULL_EVAL_TARGET_S = 0.5  # all Beauty users ranked over all items on 2 threads
FULL_EVAL_THREADS = 2
FLOOR = "floor (bare product)"


def _with_threads(run: Callable[[], object], threads: int) -> Callable[[], object]:
    """`run` under `threads` torch threads."""
    import torch

    def unit():
        torch.set_num_threads(threads)
        return run()

    return unit


def full_eval(options: Options) -> Measurement:
    """All Beauty users ranked over all items, history masked, on 1 and 2 threads (target 0.5 s on 2), beside
    its floor: the bare matrix product of all user states with all item vectors."""
    import torch

    from ..recsys.evaluate import MAX_SCORES, full_ranks, masked_history, rank_targets
    from ..recsys.experiment import _timed_setup

    options = options.defaults(repeats=5, warmup=1)
    data, model = _timed_setup(beauty_folder(options), "sasrec", None, None, 0, {})
    model.eval()
    items = model.tables().items
    block = max(1, MAX_SCORES // data.n_items)
    context = torch.from_numpy(data.context("test", model.context_length))
    targets = torch.from_numpy(data.targets("test"))
    masked_users, masked_items = (torch.from_numpy(x) for x in masked_history(data, "test"))
    starts = range(0, data.n_users, block)
    bounds = torch.searchsorted(masked_users, torch.tensor([*starts, data.n_users]))
    with torch.no_grad():
        states = torch.cat([model.user_vectors(None, context[s : s + block], model.tables()) for s in starts])

    def user_states():
        with torch.no_grad():
            tables = model.tables()
            for s in starts:
                model.user_vectors(None, context[s : s + block], tables)

    def scoring():
        for i, s in enumerate(starts):
            pairs = slice(bounds[i], bounds[i + 1])
            full_ranks(
                states[s : s + block], items, targets[s : s + block], masked_users[pairs] - s, masked_items[pairs]
            )

    def floor():
        for s in starts:
            states[s : s + block] @ items.T

    parts = {
        "full ranking": lambda: rank_targets(model, data, "test", "full"),
        "user states": user_states,
        "scoring": scoring,
        FLOOR: floor,
    }
    thread_counts = sorted({1, FULL_EVAL_THREADS, options.threads})
    samples = interleaved(
        {(name, t): _with_threads(run, t) for t in thread_counts for name, run in parts.items()},
        options.repeats,
        options.warmup,
    )
    median = {k: statistics.median(v) for k, v in samples.items()}
    gflop = 2 * data.n_users * data.n_items * items.shape[1] / 1e9
    rows = [
        _timing_row(name, samples[name, t], threads=t, **{"x floor": round(median[name, t] / median[FLOOR, t], 2)})
        for t in thread_counts
        for name in parts
    ]
    by_threads = {
        t: {
            "seconds": round(median["full ranking", t], 4),
            "floor_seconds": round(median[FLOOR, t], 4),
            "ratio_to_floor": round(median["full ranking", t] / median[FLOOR, t], 3),
            "ratio_to_floor_of_minima": round(min(samples["full ranking", t]) / min(samples[FLOOR, t]), 3),
            "scoring_ratio_to_floor": round(median["scoring", t] / median[FLOOR, t], 3),
            "user_states_seconds": round(median["user states", t], 4),
            "floor_gflop_per_s": round(gflop / median[FLOOR, t], 1),
        }
        for t in thread_counts
    }
    at_target = by_threads[FULL_EVAL_THREADS]
    status = "PASS" if at_target["seconds"] <= FULL_EVAL_TARGET_S else "ABOVE"
    values = {
        **at_target,
        "target_seconds": FULL_EVAL_TARGET_S,
        "status": status,
        "by_threads": by_threads,
        "users": data.n_users,
        "items": data.n_items,
        "block_users": block,
        "product_gflop": round(gflop, 1),
        "repeats": options.repeats,
        "samples_ms": {f"{k[0]}, {k[1]} threads": [_ms(s) for s in v] for k, v in samples.items()},
    }
    headline = (
        f"full ranking {at_target['seconds']:.3f} s on {FULL_EVAL_THREADS} threads (target <= "
        f"{FULL_EVAL_TARGET_S} s: {status}); floor {at_target['floor_seconds']:.3f} s, ratio "
        f"{at_target['ratio_to_floor']:.2f}; 1 thread {by_threads[1]['seconds']:.3f} s, ratio "
        f"{by_threads[1]['ratio_to_floor']:.2f}"
    )
    notes = [
        f"beauty, {data.n_users} users x {data.n_items} items, untrained SASRec (cost does not depend on the "
        f"weights), torch threads {thread_counts}, {options.repeats} repeats after {options.warmup} warm-up, "
        "interleaved; medians (and the ratio of minima, the least disturbed runs). On a machine shared with "
        "other work, several threads wait on each other at every parallel step: read the 1-thread rows there",
        f"blocks of {block} users (MAX_SCORES {MAX_SCORES} scores held at once); full ranking = user states "
        "(the transformer over every user's last 50 items) + scoring (product, in-place comparison with the "
        "target's score, history read back sparsely); floor = the bare product of all user states with all "
        f"item vectors, the same blocks ({gflop:.1f} GFLOP)",
    ]
    return Measurement(rows, values, headline, notes)
