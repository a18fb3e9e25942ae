"""`sda bench` / `python -m sda_lib.bench`: the benchmarks live beside tests/ in a source checkout
(`benchmarks/`), not in the installed library; this runs them from the checkout it belongs to."""

from __future__ import annotations

import sys

from .utils.paths import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    if not (REPO_ROOT / "benchmarks" / "__init__.py").is_file():
        print(
            "the benchmarks ship with the source checkout, not the installed package: "
            "git clone the repository, `bash env/setup.sh`, then `sda bench`",
            file=sys.stderr,
        )
        return 2
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import main as run

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
