"""The seed's 8-word runs as SHA-256 hashes, so the no-copying test needs no seed text in the repository.

    python tests/content/make_seed_runs.py --seed SEED_DIR            # rewrite seed_runs.sha256
    python tests/content/make_seed_runs.py --seed SEED_DIR --check    # fail if it is out of date

SEED_DIR is the folder of the seed's *.txt files, which is kept outside this repository.

The seed (the source text our programs' ideas come from) is not ours to redistribute. tests/test_content.py only
needs to know whether a shipped text repeats RUN words in a row of it, and a hash of each run answers that. A run
is RUN consecutive words as `words()` reads them (lower case, apostrophes dropped, anything that is not a-z or 0-9
separates words), joined by single spaces; its hash is the SHA-256 of that UTF-8 string, in hex. The list holds
each distinct run once, sorted, after a `#` header naming the seed files it was made from.

This module is also what the test imports, so the list and the check cannot read text differently.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

RUN = 8  # words in a row that would count as copied
HERE = Path(__file__).resolve().parent
SEED_RUNS = HERE / "seed_runs.sha256"


def words(text: str) -> list[str]:
    text = text.lower().replace("’", "'").replace("'", "")
    return re.findall(r"[a-z0-9]+", text)


def runs(text: str, size: int = RUN) -> list[str]:
    """Every `size`-word run of `text`, in order, each as its words joined by single spaces."""
    found = words(text)
    return [" ".join(found[i:i + size]) for i in range(len(found) - size + 1)]


def run_hash(run: str) -> str:
    return hashlib.sha256(run.encode("utf-8")).hexdigest()


def run_hashes(texts: Iterable[str], size: int = RUN) -> set[str]:
    return {run_hash(run) for text in texts for run in runs(text, size)}


def copied_runs(texts: Mapping[str, str], hashes: set[str] | frozenset[str], size: int = RUN) -> list[str]:
    """Each run of a text whose hash is in `hashes`, as "where: the run"."""
    return [f"{where}: {run}" for where, text in texts.items() for run in runs(text, size) if run_hash(run) in hashes]


def read_hashes(path: Path = SEED_RUNS) -> list[str]:
    """The hashes of a list written by `render`, in file order, header skipped."""
    lines = path.read_text(encoding="ascii").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def header_count(path: Path = SEED_RUNS) -> int:
    match = re.search(r"^# runs: (\d+)$", path.read_text(encoding="ascii"), flags=re.M)
    if match is None:
        raise ValueError(f"{path} has no '# runs: N' header line")
    return int(match.group(1))


def render(seed_dir: Path) -> str:
    seeds = sorted(seed_dir.glob("*.txt"))
    if not seeds:
        raise SystemExit(f"no *.txt in {seed_dir}")
    hashes = sorted(run_hashes(path.read_text(encoding="utf-8") for path in seeds))
    header = [
        f"# SHA-256 of every distinct {RUN}-word run of the seed, sorted, one per line: what",
        "# tests/test_content.py checks our shipped texts against, without carrying the seed itself.",
        "# Made by tests/content/make_seed_runs.py (its docstring says how a run is normalised) from:",
        *(f"#   {path.name} sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" for path in seeds),
        f"# runs: {len(hashes)}",
    ]
    return "\n".join([*header, *hashes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=Path, required=True, help="folder of the seed's *.txt files")
    parser.add_argument("--out", type=Path, default=SEED_RUNS, help=f"the list to write (default {SEED_RUNS.name})")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the list is out of date")
    args = parser.parse_args(argv)
    text = render(args.seed)
    count = len([line for line in text.splitlines() if not line.startswith("#")])
    if args.check:
        current = args.out.read_text(encoding="ascii") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date for {args.seed}: rerun without --check", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({count} runs)", file=sys.stderr)
        return 0
    args.out.write_text(text, encoding="ascii")
    print(f"wrote {args.out}: {count} runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
