"""Regenerate the Keras name lists stored in src/batchfit/_keras_name_lists.py from the installed keras.

    KERAS_BACKEND=jax python scripts/keras_names.py           # rewrite the generated block
    KERAS_BACKEND=jax python scripts/keras_names.py --check   # exit 1 if the block is out of date,
                                                              # 3 if another keras version is installed

batchfit never imports keras; this script is the only place that does.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import sys
import textwrap

TARGET = pathlib.Path(__file__).resolve().parents[1] / "src" / "batchfit" / "_keras_name_lists.py"
BEGIN, END = "# BEGIN GENERATED", "# END GENERATED"

# batchfit module -> the Keras module whose public names it mirrors
MODULES = {
    "batchfit": "keras",
    "batchfit.activations": "keras.activations",
    "batchfit.callbacks": "keras.callbacks",
    "batchfit.distribution": "keras.distribution",
    "batchfit.initializers": "keras.initializers",
    "batchfit.layers": "keras.layers",
    "batchfit.losses": "keras.losses",
    "batchfit.metrics": "keras.metrics",
    "batchfit.mixed_precision": "keras.mixed_precision",
    "batchfit.models": "keras.models",
    "batchfit.ops": "keras.ops",
    "batchfit.optimizers": "keras.optimizers",
    "batchfit.optimizers.schedules": "keras.optimizers.schedules",
    "batchfit.regularizers": "keras.regularizers",
    "batchfit.saving": "keras.saving",
    "batchfit.utils": "keras.utils",
}
_NOT_API = {"keras": {"src"}}      # keras.src is Keras's implementation, not its API


def keras_names() -> tuple[str, dict[str, list[str]]]:
    """The installed keras version and, per batchfit module, the sorted public names of its Keras module."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = importlib.import_module("keras")
    names = {}
    for ours, theirs in MODULES.items():
        module = importlib.import_module(theirs)
        skip = _NOT_API.get(theirs, set())
        names[ours] = sorted(n for n in dir(module) if not n.startswith("_") and n not in skip)
    return keras.__version__, names


def generated_block(version: str, names: dict[str, list[str]]) -> str:
    lines = [f"{BEGIN} by scripts/keras_names.py; do not edit by hand.",
             f'KERAS_VERSION = "{version}"', "_KERAS = {"]
    for module, module_names in names.items():
        wrapped = textwrap.wrap(" ".join(module_names), width=88, break_long_words=False,
                                break_on_hyphens=False)
        body = "\n".join("        " + line for line in wrapped)
        lines.append(f'    "{module}": """\n{body}\n    """,')
    lines += ["}", END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the stored lists differ")
    args = parser.parse_args(argv)
    text = TARGET.read_text()
    version, names = keras_names()
    new = replace_block(text, generated_block(version, names))
    if args.check:
        stored = re.search(r'KERAS_VERSION = "([^"]+)"', text)[1]
        if stored != version:
            print(f"The lists come from keras {stored}; keras {version} is installed: not compared.",
                  file=sys.stderr)
            return 3
        if new != text:
            print(f"{TARGET} is out of date: run `python scripts/keras_names.py`.", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
