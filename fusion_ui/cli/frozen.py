"""``fusion-ui frozen train|eval|generate``: frozen-LM methods (arXiv 2204.10019) — one LM
stays frozen, small parts around it learn:

- ``idpt``: input-dependent prompt tuning (a small frozen encoder + learned queries write a soft
  prompt per input); ``prompt``: its baseline, one learned prompt;
- ``connector``: the neural recursive LM (the LM runs twice, a trained connector feeds pass 1's
  last hidden states into pass 2's input);
- ``recursive``: the textual recursive LM (pass 1 writes candidate answers, a prompt-tuned pass 2
  of the same LM reads question + candidates and answers; pass 1 is the LM alone or the LM
  behind a plain prompt given with ``--first-prompt``).

``train KIND MODEL --data FILE --out DIR`` trains on prompt/answer rows (give ``--data`` once per
task for a multi-task mix) and writes only the trained part (safetensors + JSON), atomically:
Ctrl-C / SIGTERM stop at the next step and write nothing (exit 130 / 143). ``eval`` and
``generate`` take any of these folders (``--prompt-dir``), load the LM (and the encoder) and
score or generate with it. Light at import: torch loads in the functions.
"""

from __future__ import annotations

import argparse

from fusion_ui.cli.exporting import ProgressBar, Stopped, stop_on_signals
from fusion_ui.cli.scoring import ScoredModel, print_generations, print_scores
from fusion_ui.cli.training import add_train_options, train_config
from fusion_ui.frozen.methods import METHOD_KINDS

# Defaults of fusion_ui.frozen.train.DEFAULT_CONFIG's lr, fusion_ui.frozen.prompts,
# fusion_ui.frozen.connector and fusion_ui.frozen.recursive (not imported: torch)
DEFAULT_LR = 1e-2
DEFAULT_CONNECTOR_LR = 1e-3
DEFAULT_LENGTH = 8
DEFAULT_ENCODER_PROMPT = 4
DEFAULT_HIDDEN = 256
DEFAULT_CANDIDATES = 3
DEFAULT_TEMPERATURE = 1.0
DEFAULT_CANDIDATE_TOKENS = 16
TRAIN_KINDS = METHOD_KINDS  # the engine's list of frozen-LM methods (no torch at import)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "frozen",
        help="frozen-LM methods: prompt tuning (ID-PT, plain) and recursive LMs (textual, neural)",
        description="Keep one LM frozen and train only a small part beside it (arXiv "
        "2204.10019): ID-PT's prompt generator (a small frozen encoder + learned queries, one "
        "prompt per input), one fixed learned prompt, a connector between two passes of the LM "
        "(neural recursion), or pass 2's prompt of a textual recursion; then evaluate or "
        "generate with it.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    t = verbs.add_parser("train", help="train a frozen-LM part on a task mix, write it to --out")
    t.add_argument(
        "kind",
        choices=TRAIN_KINDS,
        help="idpt: input-dependent prompt; prompt: one fixed prompt; connector: neural "
        "recursion; recursive: textual recursion (pass 2's prompt)",
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
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the trained part (KIND.safetensors + KIND.json; prompt.* for idpt/prompt)",
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
        help=f"soft-prompt vectors in front of the LM's input (recursive: pass 2's; default {DEFAULT_LENGTH})",
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
    t.add_argument(
        "--hidden",
        type=int,
        default=DEFAULT_HIDDEN,
        help=f"connector: the MLP's inner width (default {DEFAULT_HIDDEN})",
    )
    t.add_argument(
        "--first-prompt",
        metavar="DIR",
        help="recursive: pass 1 is MODEL behind this plain prompt (`frozen train prompt`; "
        "default: MODEL alone)",
    )
    t.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help=f"recursive: candidates pass 1 writes, the first greedy (default {DEFAULT_CANDIDATES})",
    )
    t.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help=f"recursive: sampling temperature of the other candidates (default {DEFAULT_TEMPERATURE:g})",
    )
    t.add_argument(
        "--candidate-tokens",
        type=int,
        default=DEFAULT_CANDIDATE_TOKENS,
        help=f"recursive: the longest candidate, in tokens (default {DEFAULT_CANDIDATE_TOKENS})",
    )
    add_train_options(
        t, lr=DEFAULT_LR, seeds="the init (and the candidates)", replaces="an earlier one"
    )
    for action in t._actions:  # one --lr, its default per kind
        if action.dest == "lr":
            action.default = None
            action.help = (
                f"peak learning rate (default {DEFAULT_LR:g}; connector {DEFAULT_CONNECTOR_LR:g})"
            )
    t.set_defaults(func=run_train)

    e = verbs.add_parser(
        "eval", help="score the frozen-LM method (and the LM alone) on an eval set"
    )
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

    g = verbs.add_parser("generate", help="greedy continuations of prompts by the frozen-LM method")
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
        help="folder written by `fusion-ui frozen train` (a prompt, a connector or a recursion)",
    )
    p.add_argument(
        "--encoder", metavar="ENC", help="idpt: the encoder (default: where prompt.json says)"
    )


def run_train(args: argparse.Namespace) -> int:
    from fusion_ui.evals import load_eval_sets

    items = load_eval_sets(args.data)
    if args.lr is None:
        args.lr = DEFAULT_CONNECTOR_LR if args.kind == "connector" else DEFAULT_LR
    config = train_config(args)
    with stop_on_signals() as stop:
        bar = ProgressBar("step", f"training {args.kind}")
        done = stop.run(bar, lambda: _train(args, items, config, bar, stop.cancel),
                        f"training was cancelled, and nothing was written to {args.out}")
        if isinstance(done, Stopped):
            return done.code
    losses = done.result.losses
    tasks = len({it.skill for it in items})
    if args.kind == "connector":
        what = f"a connector of {done.trainable} parameter(s)"
    elif args.kind == "recursive":
        what = f"a textual recursion (pass 2's prompt of {args.prompt_length} vector(s))"
    else:
        what = f"a {args.kind} prompt of {args.prompt_length} vector(s)"
    print(
        f"trained {what} on {len(items)} row(s) of {tasks} task(s) in "
        f"{done.result.seconds:.1f} s: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    print(f"wrote {done.folder}")
    return 0


def _train(args: argparse.Namespace, items: list, config: object, bar: ProgressBar, cancel: object):
    """The engine's run for ``args.kind`` (its result has ``folder`` and ``result``)."""
    common = {
        "config": config,
        "max_length": args.max_length,
        "device": args.device,
        "force": args.force,
        "progress": bar,
        "cancel": cancel,
    }
    if args.kind in ("connector", "recursive") and args.encoder is not None:
        from fusion_ui.errors import RecipeError

        raise RecipeError(f"{args.kind} reads no encoder; drop --encoder")
    if args.kind == "connector":
        from fusion_ui.frozen import train_connector_run

        return train_connector_run(args.model, items, args.out, hidden=args.hidden, **common)
    if args.kind == "recursive":
        from fusion_ui.frozen import RecursionConfig, train_textual_run

        recursion = RecursionConfig(
            candidates=args.candidates,
            temperature=args.temperature,
            seed=args.seed,
            max_new_tokens=args.candidate_tokens,
        )
        return train_textual_run(args.model, items, args.out, first_prompt=args.first_prompt,
                                 recursion=recursion, length=args.prompt_length, **common)  # fmt: skip
    from fusion_ui.frozen import train_frozen

    return train_frozen(
        args.kind,
        args.model,
        items,
        args.out,
        encoder=args.encoder,
        length=args.prompt_length,
        encoder_prompt_length=args.encoder_prompt_length,
        heads=args.heads,
        **common,
    )


def _label(model: object) -> str:
    from fusion_ui.frozen import ConnectorLM, PromptedLM, RecursiveLM

    if isinstance(model, PromptedLM):
        return f"{model.config.kind} prompt"
    if isinstance(model, ConnectorLM):
        return "connector (2 passes)"
    if isinstance(model, RecursiveLM):
        return "textual recursion (2 passes)"
    return "frozen LM method"


def run_eval(args: argparse.Namespace) -> int:
    from fusion_ui.evals import load_eval_sets
    from fusion_ui.frozen import PromptedLM, RecursiveLM, answer_nll, load_frozen

    items = load_eval_sets(args.data)
    model, tokenizer = load_frozen(
        args.model, args.prompt_dir, encoder=args.encoder, device=args.device
    )
    # a prompt's p(x) is read from the prompt only (the generic scorer would show it the answer);
    # a textual recursion has no teacher-forced score (pass 1 must generate)
    rows = [
        ScoredModel(
            _label(model),
            model,
            answer_nll=answer_nll if isinstance(model, PromptedLM) else None,
            perplexity=not isinstance(model, RecursiveLM),
        )
    ]
    if not args.no_base:
        rows.append(ScoredModel("LM alone", model.lm))
    print_scores(rows, tokenizer, items, metric=args.metric, perplexity=args.perplexity,
                 batch_size=args.batch_size, device=args.device)  # fmt: skip
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from fusion_ui.frozen import load_frozen

    model, tokenizer = load_frozen(
        args.model, args.prompt_dir, encoder=args.encoder, device=args.device
    )
    print_generations(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                      device=args.device)  # fmt: skip
    return 0
