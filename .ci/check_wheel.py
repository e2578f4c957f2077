#!/usr/bin/env python3
"""Build the wheel, install it in a fresh venv outside the checkout, and use what it ships.

    python .ci/check_wheel.py [--keep] [--workdir DIR] [--venv DIR]

1. ``pip wheel`` from a clean copy of the tree (a stale ``build/`` cannot leak into it); the
   wheel must hold every file under ``fusion_ui/assets/`` and no README screenshot.
2. A fresh venv: ``torch==2.13.0`` first (CI's local wheel), then the wheel and its
   dependencies, from the same package index as ``.ci/run``.
3. From a folder outside the checkout, with the venv's commands only:
   a. ``fusion-ui merge <the packaged dare_ties recipe>``; the result loads with transformers;
      ``fusion-ui cocktail --no-merge`` on the packaged forgetful expert and its 5 examples;
   b. ``fusion-ui app --no-browser`` on the packaged demo family: the page holds the family,
      the CSS, the logo and the example prompts; ``/load_models`` lists the experts;
      ``/merge_recipe`` and ``/export_recipe`` merge and export it; SIGTERM stops the server.

Nothing is downloaded beyond the packages (no model weights, no data sets: the demo family is
in the wheel), and nothing is written into the checkout. Prints each step and its time.
Needs ``gradio_client`` in the Python that runs it (a dependency of gradio, so CI's has it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
# What the wheel is built from: the tree as git would see it, without what builds and runs leave.
NOT_SOURCE = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv",
              "test-artifacts", "bench-data", "merged", "out")
SERVER_START_S = 240  # importing torch + gradio and building the app: ~30 s on the 2-core machine
steps: list[tuple[str, float]] = []


@contextmanager
def step(name: str, what: str) -> Iterator[None]:
    print(f"-- {name}: {what}", flush=True)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    steps.append((name, seconds))
    print(f"   {name} ok ({seconds:.1f} s)", flush=True)


def run(cmd: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None, quiet: bool = False) -> str:
    """Run a command; on failure print its output and stop the check."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-6000:])
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"check_wheel: failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    if not quiet and proc.stdout.strip():
        print(textwrap.indent(proc.stdout.strip(), "   | "))
    return proc.stdout


def check(condition: bool, message: str, problem: object = "") -> None:
    """Print what was checked, or stop with it and what was wrong."""
    if not condition:
        raise SystemExit(f"check_wheel: failed: {message} {problem}".rstrip())
    print(f"   ✓ {message}")


def build_wheel(work: Path) -> Path:
    source, dist = work / "source", work / "dist"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source], cwd=work)
    (wheel,) = dist.glob("fusion_ui-*.whl")
    return wheel


def check_wheel_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assets = ROOT / "fusion_ui" / "assets"
    wanted = {p.relative_to(ROOT).as_posix() for p in assets.rglob("*") if p.is_file()}
    print(f"   {wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB, {len(names)} files, "
          f"{sum(n.startswith('fusion_ui/assets/') for n in names)} of them package data")
    check(wanted <= names, f"the wheel holds all {len(wanted)} files of fusion_ui/assets",
          f"(missing: {sorted(wanted - names)[:5]})")
    check("fusion_ui/py.typed" in names, "the wheel holds py.typed")
    stray = sorted(n for n in names if n.endswith(".png") or n.startswith(("tests/", "assets/", "benchmarks/")))
    check(not stray, "no screenshots, tests or benchmarks in the wheel", stray[:5])


def make_venv(venv: Path, wheel: Path, work: Path) -> Path:
    run([sys.executable, "-m", "venv", venv], cwd=work)
    python = venv / "bin" / "python"
    # --no-compile: byte-compiling every module of torch and gradio took most of the install
    # (183 s against 62 s on the 2-core machine); the checks compile only what they import.
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    run([*pip, TORCH], cwd=work)
    run([*pip, wheel], cwd=work)
    return python


def hermetic_env(venv: Path, home: Path) -> dict[str, str]:
    """The venv's commands first on PATH, a throw-away HOME, no hub access, no checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), HOME=str(home),
               HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False")
    return env


def packaged_family(python: Path, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """Where the installed package says its files are."""
    out = run([python, "-c", textwrap.dedent("""
        import json, fusion_ui
        from fusion_ui.resources import demo_dir, demo_recipe, ui_text
        print(json.dumps({"package": fusion_ui.__path__[0], "family": str(demo_dir()),
                          "recipe": str(demo_recipe("dare_ties")), "css": ui_text("app.css"),
                          "logo": ui_text("logo.svg")}))
    """)], cwd=cwd, env=env, quiet=True)
    return json.loads(out.strip().splitlines()[-1])


def check_merged(python: Path, folder: Path, cwd: Path, env: dict[str, str]) -> None:
    run([python, "-c", textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
        tok = AutoTokenizer.from_pretrained({str(folder)!r})
        assert all(torch.isfinite(p.float()).all() for p in model.parameters())
        ids = tok("mirror: hello =", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        answer = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
        print(f"{{type(model).__name__}}, {{model.num_parameters()}} parameters; 'mirror: hello =' ->{{answer!r}}")
    """)], cwd=cwd, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            print(log.read_text()[-6000:])
            raise SystemExit(f"check_wheel: the app exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    print(log.read_text()[-6000:])
    raise SystemExit(f"check_wheel: the app did not answer on {url} within {SERVER_START_S} s")


def check_app_page(url: str, where: dict[str, str]) -> None:
    """The served page is built on the packaged family, with the packaged CSS, logo and prompts."""
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.load(response)
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    base = Path(props["base-model"]["value"])
    finetunes = props["finetunes"]["value"].splitlines()
    check(base == Path(where["family"]) / "base" and base.is_relative_to(where["package"]),
          f"the Models tab opens on the installed package's family ({base})")
    check(sorted(Path(f).name for f in finetunes) == ["expert_mirror", "expert_shift", "expert_upper"],
          "with its three experts as the fine-tunes")
    check(where["css"].strip()[:200] in (config.get("css") or ""), "the page carries the packaged app.css")
    html = [str(c["props"].get("value")) for c in config["components"] if c.get("type") == "html"]
    check(bool(where["logo"].strip()) and any(where["logo"].strip()[:300] in h for h in html), "and the packaged logo")
    labels = [str(choice) for choice in props["example-prompt"].get("choices") or []]
    check(any("upper: hello =" in label for label in labels), f"and the {len(labels)} packaged example prompts")


def check_app_api(url: str, where: dict[str, str], exports: Path, python: Path, cwd: Path,
                  env: dict[str, str]) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    family = Path(where["family"])
    experts = [str(family / f"expert_{s}") for s in ("upper", "shift", "mirror")]
    table, verdict, _presets = client.predict(str(family / "base"), "\n".join(experts), api_name="/load_models")
    roles = [row[1] for row in table["data"]]
    check(roles[0] == "base" and sorted(roles[1:]) == ["expert_mirror", "expert_shift", "expert_upper"],
          f"/load_models lists the base and its experts: {re.sub(r'<[^>]+>', '', verdict).strip()[:70]}")
    recipe = absolute_recipe(Path(where["recipe"]))
    status = client.predict(recipe, api_name="/merge_recipe")
    check(status.startswith("Merged"), f"/merge_recipe: {status}")
    written = client.predict(recipe, "from-wheel", "bfloat16", "2GB", "base", True, False, api_name="/export_recipe")
    folder = Path(written["folder"])
    check(folder == (exports / "from-wheel").resolve() and "config.json" in written["files"],
          f"/export_recipe wrote {len(written['files'])} files to {folder}")
    check_merged(python, folder, cwd, env)


def absolute_recipe(path: Path) -> str:
    """The recipe's YAML with its model paths made absolute: a recipe sent to the API has no folder."""
    import yaml

    data = yaml.safe_load(path.read_text())
    data["base"] = str((path.parent / data["base"]).resolve())
    for entry in data["models"]:
        entry["model"] = str((path.parent / entry["model"]).resolve())
    return yaml.safe_dump(data, sort_keys=False)


def stop(server: subprocess.Popen, log: Path) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise SystemExit("check_wheel: the app did not stop within 60 s of SIGTERM") from None
    if code != 0:
        print(log.read_text()[-4000:])
    check(code == 0, f"SIGTERM stopped the app (exit code {code})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="work here (default: a new temporary folder)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="reuse this venv (only the wheel is reinstalled: quick reruns by hand)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (wheel, venv, merges, app log)")
    args = parser.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="fusion-ui-wheel-"))).resolve()
    if work.is_relative_to(ROOT):
        parser.error("--workdir must be outside the checkout: the check runs the installed package only")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        check_all(work, args.venv)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("wheel check passed: " + ", ".join(f"{name} {s:.0f} s" for name, s in steps)
          + f"; total {time.perf_counter() - started:.0f} s")
    return 0


def check_all(work: Path, reuse_venv: Path | None) -> None:
    with step("wheel", "pip wheel from a clean copy of the tree"):
        wheel = build_wheel(work)
        check_wheel_files(wheel)

    venv = (reuse_venv or work / "venv").resolve()
    with step("install", f"a fresh venv outside the checkout, {TORCH}, then the wheel and its dependencies"):
        if reuse_venv is not None and (venv / "bin" / "python").is_file():
            python = venv / "bin" / "python"
            run([python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheel], cwd=work)
        else:
            python = make_venv(venv, wheel, work)

    cwd = work / "elsewhere"  # outside the checkout: only the installed package can be imported
    cwd.mkdir(exist_ok=True)
    env = hermetic_env(venv, work / "home")
    where = packaged_family(python, cwd, env)
    check(Path(where["package"]).is_relative_to(venv), f"fusion_ui imports from the venv ({where['package']})")

    with step("merge", "fusion-ui merge <the packaged dare_ties.yaml>, then load it with transformers"):
        out = cwd / "merged"
        run([venv / "bin" / "fusion-ui", "merge", where["recipe"], "--out", out, "--device", "cpu"], cwd=cwd, env=env)
        check_merged(python, out, cwd, env)

    with step("cocktail", "fusion-ui cocktail --no-merge on the packaged forgetful expert and its 5 examples"):
        family = Path(where["family"])
        recipe_out = cwd / "cocktail.yaml"  # the merge itself is fusion-ui merge's, checked above
        printed = run([venv / "bin" / "fusion-ui", "cocktail", family / "base", family / "forgetful" / "expert_upper",
                       "--examples", family / "cocktail" / "upper_5.jsonl", "--no-merge", "--recipe-out", recipe_out,
                       "--device", "cpu"], cwd=cwd, env=env, quiet=True)
        check("LM-Cocktail weights from 5 example(s)" in printed, "it prints the losses and weights")
        check("weights_from:" in recipe_out.read_text(), "its recipe records where they came from")

    with step("app", "fusion-ui app --no-browser: the page, /load_models, /merge_recipe, /export_recipe"):
        port, exports, log = free_port(), work / "exports", work / "app.log"
        url = f"http://127.0.0.1:{port}/"
        with log.open("w") as sink:
            server = subprocess.Popen(
                [venv / "bin" / "fusion-ui", "app", "--no-browser", "--port", str(port), "--device", "cpu",
                 "--export-root", str(exports)], cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for_http(url, server, log)
            print(f"   serving on {url}")
            check_app_page(url, where)
            check_app_api(url, where, exports, python, cwd, env)
            stop(server, log)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main())
