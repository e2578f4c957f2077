"""``fusion-ui compose train|eval|generate``: CALM, a frozen anchor composed with a frozen
augmenting model through small trained bridges (arXiv 2401.02412).

``train ANCHOR AUG --data FILE --out BRIDGES`` trains the bridges on prompt/answer rows and
writes only them (``bridges.safetensors`` + ``bridges.json``), atomically: Ctrl-C / SIGTERM stop
at the next step and write nothing (exit 130 / 143). ``eval`` and ``generate`` load the two
models and the bridges. Light at import: torch loads in the functions.
"""

from __future__ import annotations

import argparse

from fusion_ui.cli.exporting import ProgressBar, Stopped, stop_on_signals
from fusion_ui.cli.scoring import ScoredModel, print_generations, print_scores
from fusion_ui.cli.training import add_train_options, train_config

# Defaults of the engine (not imported: torch); the others are fusion_ui.cli.training's
DEFAULT_LR = 1e-3
DEFAULT_EVERY = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compose",
        help="CALM: compose a frozen anchor with a frozen augmenting model through trained bridges",
        description="CALM (arXiv 2401.02412): train small cross-attention bridges from an augmenting "
        "model's layers into an anchor's, both frozen and sharing one tokenizer; then evaluate or "
        "generate with anchor + augmenting model + bridges.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    t = verbs.add_parser("train", help="train bridges on a composition set and write them to --out")
    _add_models(t)
    t.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="composition set: .jsonl or .csv with prompt and answer",
    )
    t.add_argument(
        "--out",
        required=True,
        metavar="BRIDGES",
        help="folder for bridges.safetensors + bridges.json",
    )
    t.add_argument(
        "--pairs",
        metavar="A:B,...",
        help="layer pairs AUG_BLOCK:ANCHOR_BLOCK (0-based), e.g. 3:5,7:11 "
        f"(default: every {DEFAULT_EVERY}th block of AUG, evenly spaced blocks of ANCHOR)",
    )
    t.add_argument(
        "--every",
        type=int,
        default=DEFAULT_EVERY,
        help=f"default pairs: every Nth block of AUG (default {DEFAULT_EVERY})",
    )
    t.add_argument(
        "--offset",
        type=int,
        default=None,
        help="default pairs: AUG's first block (default every - 1)",
    )
    t.add_argument(
        "--heads", type=int, default=None, help="cross-attention heads (default: the anchor's)"
    )
    add_train_options(t, lr=DEFAULT_LR, seeds="the bridges' init", replaces="earlier bridges")
    t.set_defaults(func=run_train)

    e = verbs.add_parser("eval", help="score the composition (and the anchor alone) on an eval set")
    _add_models(e)
    _add_bridges(e)
    e.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="eval set: .jsonl or .csv with prompt and answer",
    )
    e.add_argument("--metric", choices=("exact_match", "contains"), default="exact_match")
    e.add_argument("--perplexity", action="store_true", help="also report answer-only perplexity")
    e.add_argument("--no-anchor", action="store_true", help="skip the anchor-alone baseline row")
    e.add_argument("--batch-size", type=int, default=32)
    e.set_defaults(func=run_eval)

    g = verbs.add_parser("generate", help="greedy continuations of prompts by the composition")
    _add_models(g)
    _add_bridges(g)
    g.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.set_defaults(func=run_generate)


    r = verbs.add_parser(
        "read",
        help="what each bridge reads for one prompt (and the greedy answer): a table, and an HTML page",
    )
    _add_models(r)
    _add_bridges(r)
    r.add_argument("--prompt", required=True, help="the prompt, e.g. 'jix + pxx ='")
    r.add_argument("--max-new-tokens", type=int, default=4, help="greedy answer tokens read too (default 4)")
    r.add_argument("--html", metavar="FILE", help="also write the heatmaps and the layer diagram here")
    r.set_defaults(func=run_read)


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "anchor", metavar="ANCHOR", help="the anchor m_B (its head speaks): folder or hub id"
    )
    p.add_argument("augment", metavar="AUG", help="the augmenting model m_A: folder or hub id")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


def _add_bridges(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bridges",
        required=True,
        metavar="BRIDGES",
        help="folder written by `fusion-ui compose train`",
    )


def run_train(args: argparse.Namespace) -> int:
    from fusion_ui.compose import parse_pairs, train_composition
    from fusion_ui.evals import load_eval_set

    items = load_eval_set(args.data)
    pairs = parse_pairs(args.pairs) if args.pairs else None
    config = train_config(args)
    with stop_on_signals() as stop:
        bar = ProgressBar("step", "training bridges")
        done = stop.run(
            bar,
            lambda: train_composition(
                args.anchor,
                args.augment,
                items,
                args.out,
                pairs=pairs,
                every=args.every,
                offset=args.offset,
                heads=args.heads,
                config=config,
                max_length=args.max_length,
                device=args.device,
                force=args.force,
                progress=bar,
                cancel=stop.cancel,
            ),
            f"training was cancelled, and nothing was written to {args.out}",
        )
        if isinstance(done, Stopped):
            return done.code
    losses = done.result.losses
    print(
        f"trained {len(done.pairs)} bridge(s) at pairs {','.join(str(p) for p in done.pairs)} "
        f"in {done.result.seconds:.1f} s: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    print(f"wrote {done.folder}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from fusion_ui.compose import load_composition
    from fusion_ui.evals import load_eval_set

    items = load_eval_set(args.data)
    model, tokenizer = load_composition(args.anchor, args.augment, args.bridges, device=args.device)
    rows = [ScoredModel("composition", model)]
    if not args.no_anchor:
        rows.append(ScoredModel("anchor alone", model.anchor))
    print_scores(rows, tokenizer, items, metric=args.metric, perplexity=args.perplexity,
                 batch_size=args.batch_size, device=args.device)  # fmt: skip
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from fusion_ui.compose import load_composition

    model, tokenizer = load_composition(args.anchor, args.augment, args.bridges, device=args.device)
    print_generations(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                      device=args.device)  # fmt: skip
    return 0


def run_read(args: argparse.Namespace) -> int:
    import html

    from fusion_ui import figures
    from fusion_ui.compose import load_composition, read_bridges

    model, tokenizer = load_composition(args.anchor, args.augment, args.bridges, device=args.device)
    reading = read_bridges(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens)
    last = reading.prompt_tokens - 1  # the prompt's last token: where the answer is decided
    weights = reading.head_weights()  # (bridges, T, T), mean over heads
    print(f"prompt {args.prompt!r} -> answer {reading.answer!r} ({len(reading.tokens)} tokens)")
    print(f"at the prompt's last token {reading.tokens[last]!r}:")
    for k, pair in enumerate(reading.pairs):
        top = int(weights[k, last].argmax())
        print(f"  bridge {k + 1} ({pair}): adds {reading.contribution[k, last]:.2f} x m_B's state, "
              f"reads m_A's {reading.tokens[top]!r} (token {top}) most ({weights[k, last, top]:.2f})")
    if args.html:
        n_augment = model.augment.config.num_hidden_layers
        n_anchor = model.anchor.config.num_hidden_layers
        path = figures.write_html_page(args.html, f"What the bridges read: {args.prompt}", [
            f"<h1>What the bridges read</h1><p class=\"note\">Prompt <code>{html.escape(args.prompt)}</code>, "
            f"greedy answer <code>{html.escape(reading.answer)}</code>; bridges {html.escape(args.bridges)}.</p>",
            figures.figure_html(figures.bridge_attention_chart(reading), "attention"),
            figures.figure_html(figures.bridge_layer_diagram(reading.pairs, n_augment, n_anchor), "layers"),
        ])
        print(f"wrote {path}")
    return 0
