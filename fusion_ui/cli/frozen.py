"""``fusion-ui frozen train|eval|generate``: frozen-LM prompt methods (arXiv 2204.10019) —
input-dependent prompt tuning (``idpt``: a small frozen encoder + learned queries write a soft
prompt per input) and its baseline, plain prompt tuning (``prompt``: one learned prompt).

``train idpt|prompt MODEL --data FILE --out DIR`` trains the prompt on prompt/answer rows (give
``--data`` once per task for a multi-task mix) and writes only it (``prompt.safetensors`` +
``prompt.json``), atomically: Ctrl-C / SIGTERM stop at the next step and write nothing (exit
130 / 143). ``eval`` and ``generate`` load the LM, the prompt and its encoder. Light at import:
torch loads in the functions.
"""

from __future__ import annotations

import argparse
import sys

from fusion_ui.cli.exporting import ProgressBar, stop_on_signals
from fusion_ui.cli.training import add_train_options, train_config
from fusion_ui.errors import CancelledError

# Defaults of fusion_ui.frozen.train.DEFAULT_CONFIG's lr and fusion_ui.frozen.prompts (not imported: torch)
DEFAULT_LR = 1e-2
DEFAULT_LENGTH = 8
DEFAULT_ENCODER_PROMPT = 4
KINDS = ("idpt", "prompt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "frozen",
        help="frozen-LM methods: input-dependent prompt tuning (ID-PT) and plain prompt tuning",
        description="Keep one LM frozen and train only a soft prompt in front of it (arXiv "
        "2204.10019): ID-PT's prompt generator (a small frozen encoder + learned queries, one "
        "prompt per input) or one fixed learned prompt; then evaluate or generate with it.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    t = verbs.add_parser("train", help="train a prompt on a task mix and write it to --out")
    t.add_argument(
        "kind", choices=KINDS, help="idpt: input-dependent prompt; prompt: one fixed prompt"
    )
    _add_model(t)
    t.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="FILE",
        help=".jsonl or .csv with prompt and answer (and skill); repeat for a mix of tasks",
    )
    t.add_argument(
        "--out", required=True, metavar="DIR", help="folder for prompt.safetensors + prompt.json"
    )
    t.add_argument(
        "--encoder",
        metavar="ENC",
        help="idpt: the frozen encoder that reads the input (folder or hub id, sharing MODEL's "
        "tokenizer; default: MODEL itself)",
    )
    t.add_argument(
        "--prompt-length",
        type=int,
        default=DEFAULT_LENGTH,
        metavar="K",
        help=f"soft-prompt vectors in front of the LM's input (default {DEFAULT_LENGTH})",
    )
    t.add_argument(
        "--encoder-prompt-length",
        type=int,
        default=DEFAULT_ENCODER_PROMPT,
        help=f"idpt: learned vectors in front of the encoder's input (default {DEFAULT_ENCODER_PROMPT})",
    )
    t.add_argument(
        "--heads", type=int, default=None, help="idpt: cross-attention heads (default: the LM's)"
    )
    add_train_options(t, lr=DEFAULT_LR, seeds="the prompt's init", replaces="an earlier prompt")
    t.set_defaults(func=run_train)

    e = verbs.add_parser("eval", help="score the prompted LM (and the LM alone) on an eval set")
    _add_model(e)
    _add_prompt(e)
    e.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="FILE",
        help="eval set: .jsonl or .csv with prompt and answer; repeatable",
    )
    e.add_argument("--metric", choices=("exact_match", "contains"), default="exact_match")
    e.add_argument("--perplexity", action="store_true", help="also report answer-only perplexity")
    e.add_argument("--no-base", action="store_true", help="skip the LM-alone baseline row")
    e.add_argument("--batch-size", type=int, default=32)
    e.set_defaults(func=run_eval)

    g = verbs.add_parser("generate", help="greedy continuations of prompts by the prompted LM")
    _add_model(g)
    _add_prompt(g)
    g.add_argument("--prompt", action="append", required=True, help="a prompt; repeatable")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.set_defaults(func=run_generate)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the frozen LM: folder or hub id")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


def _add_prompt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompt-dir",
        required=True,
        metavar="DIR",
        help="folder written by `fusion-ui frozen train`",
    )
    p.add_argument(
        "--encoder", metavar="ENC", help="idpt: the encoder (default: where prompt.json says)"
    )


def run_train(args: argparse.Namespace) -> int:
    from fusion_ui.evals import load_eval_sets
    from fusion_ui.frozen import train_frozen

    items = load_eval_sets(args.data)
    config = train_config(args)
    with stop_on_signals() as stop:
        bar = ProgressBar("step", f"training {args.kind}")
        try:
            done = train_frozen(
                args.kind,
                args.model,
                items,
                args.out,
                encoder=args.encoder,
                length=args.prompt_length,
                encoder_prompt_length=args.encoder_prompt_length,
                heads=args.heads,
                config=config,
                max_length=args.max_length,
                device=args.device,
                force=args.force,
                progress=bar,
                cancel=stop.cancel,
            )
        except (CancelledError, KeyboardInterrupt):
            if not stop.stopped:
                raise
            bar.close()
            return stop.exit_code(f"training was cancelled, and nothing was written to {args.out}")
        finally:
            bar.close()
    losses = done.result.losses
    tasks = len({it.skill for it in items})
    print(
        f"trained a {args.kind} prompt of {args.prompt_length} vector(s) on {len(items)} row(s) of "
        f"{tasks} task(s) in {done.result.seconds:.1f} s: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    print(f"wrote {done.folder}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from fusion_ui.evals import load_eval_sets, predict, score_table, summarize
    from fusion_ui.frozen import answer_nll, load_prompted

    items = load_eval_sets(args.data)
    model, tokenizer = load_prompted(
        args.model, args.prompt_dir, encoder=args.encoder, device=args.device
    )
    options = {"device": args.device, "batch_size": args.batch_size}
    frames = [predict(model, tokenizer, items, model_name=f"{model.config.kind} prompt", **options)]
    if args.perplexity:  # p(x) from the prompt only: the generic scorer would show it the answer
        nll = answer_nll(model, tokenizer, items, batch_size=args.batch_size)
        frames[0]["answer_nll"] = [n for n, _ in nll]
        frames[0]["answer_tokens"] = [k for _, k in nll]
    if not args.no_base:
        frames.append(
            predict(
                model.lm,
                tokenizer,
                items,
                model_name="LM alone",
                with_perplexity=args.perplexity,
                **options,
            )
        )
    results = summarize(pd.concat(frames, ignore_index=True))
    print(f"{args.metric} (%), {len(items)} item(s)")
    print((score_table(results, args.metric) * 100).round(1).to_string())
    if args.perplexity:
        print("\nanswer-only perplexity")
        print(score_table(results, "perplexity").round(3).to_string())
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from fusion_ui.evals import greedy_generate
    from fusion_ui.frozen import load_prompted

    model, tokenizer = load_prompted(
        args.model, args.prompt_dir, encoder=args.encoder, device=args.device
    )
    texts = greedy_generate(
        model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, device=args.device
    )
    for prompt, text in zip(args.prompt, texts, strict=True):
        print(f"{prompt}{text}")
    sys.stdout.flush()
    return 0
