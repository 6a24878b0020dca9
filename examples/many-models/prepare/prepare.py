"""Make a sales-like CSV (weekly quantity per store and brand, driven by price and season)
and split it into one ``<out>/<Store>/<Brand>/sales.csv`` per pair, with an ``MLTable`` that
reads them and names the partition columns. Deterministic: the same arguments give the same
files."""

import argparse
import math
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--stores", type=int, default=4)
parser.add_argument("--brands", type=int, default=3)
parser.add_argument("--weeks", type=int, default=104)
parser.add_argument("--out", required=True)
args = parser.parse_args()

rng = random.Random(42)
os.makedirs(args.out, exist_ok=True)
whole = os.path.join(args.out, "all_sales.csv")  # the whole CSV, before the split
rows = ["Store,Brand,week,price,quantity"]
for s in range(1, args.stores + 1):
    for b in range(1, args.brands + 1):
        base, slope = rng.uniform(80, 200), rng.uniform(-30, -5)
        for week in range(args.weeks):
            price = round(rng.uniform(1.0, 4.0), 2)
            season = 15 * math.sin(2 * math.pi * week / 52)
            quantity = max(0, round(base + slope * price + season + rng.gauss(0, 5)))
            rows.append(f"store{s:03d},brand{b:02d},{week},{price},{quantity}")
with open(whole, "w") as f:
    f.write("\n".join(rows) + "\n")

# split it: one folder per store and brand
by_pair: dict[tuple[str, str], list[str]] = {}
for line in rows[1:]:
    store, brand, rest = line.split(",", 2)
    by_pair.setdefault((store, brand), []).append(rest)
for (store, brand), lines in by_pair.items():
    folder = os.path.join(args.out, store, brand)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sales.csv"), "w") as f:
        f.write("week,price,quantity\n" + "\n".join(lines) + "\n")
with open(os.path.join(args.out, "MLTable"), "w") as f:
    f.write(
        "paths:\n"
        "  - pattern: ./*/*/sales.csv\n"
        "transformations:\n"
        "  - read_delimited:\n"
        "      delimiter: ','\n"
        "      header: all_files_same_headers\n"
        "  - extract_columns_from_partition_format: '{Store}/{Brand}/sales.csv'\n"
    )
print(f"{len(rows) - 1} rows split into {len(by_pair)} store/brand folders under {args.out}")
