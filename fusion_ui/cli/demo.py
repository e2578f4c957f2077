"""``fusion-ui demo build``: (re)build the built-in demo family, offline and seeded;
``fusion-ui demo build-calm``: the CALM demo (``fusion_ui/assets/demo/calm``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tqdm import tqdm


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build the built-in demo family (base, experts, eval sets)")
    actions = parser.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="train the family from scratch (deterministic for a seed)")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped fusion_ui/assets/demo)")
    build.add_argument("--size", choices=("tiny", "full"), default="full", help="preset: tiny checks the pipeline in seconds")
    build.add_argument("--seed", type=int, default=None, help="root seed (default: the preset's, 0)")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; part of bit-reproducibility)")
    build.add_argument("--base-steps", type=int, default=None, help="override the base's pretraining steps")
    build.add_argument("--expert-steps", type=int, default=None, help="override each expert's fine-tuning steps")
    build.add_argument("--expert-lr", type=float, default=None, help="override the experts' learning rate")
    build.add_argument(
        "--replay", type=float, default=None,
        help="share of general-skill examples mixed into each expert's fine-tune (default: the preset's)",
    )
    build.add_argument(
        "--experts", default=None, metavar="SKILL[,SKILL]",
        help="which expert skills to fine-tune, comma-separated (default: all of them)",
    )
    build.add_argument(
        "--onto-base", type=Path, default=None, metavar="DIR",
        help="fine-tune the experts onto this existing base (e.g. fusion_ui/assets/demo/base) instead of "
        "pretraining one: writes only --out/expert_<skill>/ and --out/build_info.json (needs --out)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing family in --out")
    build.set_defaults(func=run_build)
    examples = actions.add_parser(
        "examples", help="write N examples of each expert skill for LM-Cocktail (never an eval word)"
    )
    examples.add_argument("--out", type=Path, default=None,
                          help="output folder (default: the shipped fusion_ui/assets/demo/cocktail)")
    examples.add_argument("--n", type=int, default=5, help="examples per skill (default 5, as in the paper)")
    examples.add_argument("--seed", type=int, default=None, help="root seed (default: the preset's, 0)")
    examples.set_defaults(func=run_examples)
    calm = actions.add_parser(
        "build-calm",
        help="train the CALM demo (key-value arithmetic: m_A knows keys, m_B arithmetic, bridges join them)",
    )
    calm.add_argument("--out", type=Path, default=None,
                      help="output folder (default: the shipped fusion_ui/assets/demo/calm)")
    calm.add_argument("--size", choices=("tiny", "full"), default="full",
                      help="preset: tiny checks the pipeline in seconds")
    calm.add_argument("--seed", type=int, default=None, help="root seed (default 0)")
    calm.add_argument("--no-eval", action="store_true", help="skip scoring the table at the end")
    calm.add_argument("--bridges-only", action="store_true",
                      help="keep the models of an earlier build in --out and train only the bridges again")
    calm.add_argument("--ablations", action="store_true",
                      help="after the build, train the ablations too (random m_A, LoRA on m_B; a few minutes more)")
    calm.add_argument("--overwrite", action="store_true", help="replace an existing CALM demo in --out")
    calm.set_defaults(func=run_build_calm)


def run_build(args: argparse.Namespace) -> int:
    from fusion_ui.demo import DEMO_DIR, PRESETS, build_experts, build_family
    from fusion_ui.errors import RecipeError

    cfg = PRESETS[args.size]
    changes: dict[str, object] = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.replay is not None:
        changes["replay"] = args.replay
    if args.base_steps is not None:
        changes["base"] = dataclasses.replace(cfg.base, steps=args.base_steps)
    expert_changes = {k: v for k, v in (("steps", args.expert_steps), ("lr", args.expert_lr)) if v is not None}
    if expert_changes:
        changes["expert"] = dataclasses.replace(cfg.expert, **expert_changes)
    if args.experts is not None:
        changes["experts"] = tuple(s.strip() for s in args.experts.split(",") if s.strip())
    cfg = dataclasses.replace(cfg, **changes)
    if args.onto_base is not None and args.out is None:
        raise RecipeError("--onto-base writes experts beside a family, not into it: give --out DIR")
    out = args.out if args.out is not None else DEMO_DIR

    onto = args.onto_base is not None
    total = (0 if onto else cfg.base.steps) + cfg.expert.steps * len(cfg.experts)
    with tqdm(total=total, unit="step", desc="base") as bar:

        def progress(stage: str, _done: int, _total: int) -> None:
            bar.set_description(stage)
            bar.update(1)

        if onto:
            report = build_experts(args.onto_base, out, cfg, overwrite=args.overwrite, progress=progress)
        else:
            report = build_family(out, cfg, overwrite=args.overwrite, progress=progress)
    for name, folder in report.models.items():
        print(f"{name:>16}: {folder}  ({report.seconds[name]:.0f} s, final loss {report.final_loss[name]:.4f})")
    if not onto:
        print(f"{'eval sets':>16}: {out / 'evals'}")
    return 0


def run_examples(args: argparse.Namespace) -> int:
    from fusion_ui.demo import DEMO_DIR, PRESETS
    from fusion_ui.demo.build import write_cocktail_examples
    from fusion_ui.errors import RecipeError

    if args.n < 1:
        raise RecipeError("--n must be at least 1")
    cfg = PRESETS["full"] if args.seed is None else dataclasses.replace(PRESETS["full"], seed=args.seed)
    out = args.out if args.out is not None else DEMO_DIR / "cocktail"
    for skill, path in write_cocktail_examples(cfg, out, args.n).items():
        print(f"{skill:>8}: {path}")
    return 0


def run_build_calm(args: argparse.Namespace) -> int:
    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.demo.calm_build import PAPER_TABLE, build_calm_demo, format_table, preset

    cfg = preset(args.size) if args.seed is None else preset(args.size, seed=args.seed)
    out = args.out if args.out is not None else DEMO_DIR / "calm"
    models = 0 if args.bridges_only else cfg.augment_train.steps + cfg.anchor_train.steps
    with tqdm(total=models + cfg.bridges_train.steps, unit="step", desc="augment") as bar:

        def progress(stage: str, _done: int, _total: int) -> None:
            bar.set_description(stage)
            bar.update(1)

        report = build_calm_demo(
            out, cfg, overwrite=args.overwrite, progress=progress, evaluate=not args.no_eval,
            bridges_only=args.bridges_only,
        )
    for stage, secs in report.seconds.items():
        loss = report.final_loss.get(stage)
        print(f"{stage:>10}: {secs:.0f} s" + (f", final loss {loss:.4f}" if loss is not None else ""))
    if report.table:
        print(format_table(report.table, PAPER_TABLE))
    if args.ablations:
        from fusion_ui.demo.calm_build import build_ablations

        for name, entry in build_ablations(out, cfg, evaluate=not args.no_eval).items():
            print(f"{name}: {entry}")
    print(f"written to {out}")
    return 0
