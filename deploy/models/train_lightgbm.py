#!/usr/bin/env python3
"""Trains a LightGBM model on `fraudline backtest --features-out` output.

    fraudline backtest --rules deploy/rules/default.toml --events history.jsonl --features-out features.csv
    python3 deploy/models/train_lightgbm.py features.csv model.txt [--trees 300] [--depth 6] [--predictions p.txt]

The model file is LightGBM's text format with fraudline's feature names
(dots become underscores there; fraudline maps them back), ready for
`[model] file` or `backtest --model`. Columns: event_id, label, fraud, then
the features; an empty cell is a missing value. Needs numpy and lightgbm
(deploy/ci/install-tools.sh installs them under the tools directory).
"""
import argparse
import csv

import lightgbm as lgb
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("features")
    ap.add_argument("model")
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--predictions", help="write LightGBM's own prediction per row here")
    a = ap.parse_args()
    with open(a.features, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    names = [n.replace(".", "_") for n in header[3:]]
    x = np.array([[float(v) if v != "" else np.nan for v in r[3:]] for r in rows], dtype=np.float64)
    y = np.array([int(r[2]) for r in rows])
    params = {
        "objective": "binary",
        "max_depth": a.depth,
        "num_leaves": min(2 ** a.depth, 63),
        "learning_rate": a.learning_rate,
        "min_data_in_leaf": 20,
        "seed": a.seed,
        "deterministic": True,
        "verbose": -1,
    }
    m = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names), num_boost_round=a.trees)
    m.save_model(a.model)
    if a.predictions:
        np.savetxt(a.predictions, m.predict(x), fmt="%.17g")
    print(f"trained on {len(rows)} rows ({int(y.sum())} fraud): {m.num_trees()} trees -> {a.model}")


if __name__ == "__main__":
    main()
